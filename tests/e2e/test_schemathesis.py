"""Schemathesis against the OpenAPI schema of a real API process (real Postgres and Redis, no worker).

Every operation gets a few generated requests, valid and invalid; none may answer 5xx other than the 503
and 504 the schema declares, and every answer must match the schema's status codes, content types and
response bodies. No worker runs, so the sync routes wait EMBEDQ_SYNC_TIMEOUT_S (kept short) and answer 504.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.processes import ManagedProcess, start_api

from app.main import create_app

pytestmark = pytest.mark.e2e  # a real API process

# Examples per operation: about 40 operations in ~1 minute on 2 cores. A deeper run, off CI:
# EMBEDQ_FUZZ_EXAMPLES=120 EMBEDQ_FUZZ_DEEP=1 (random rather than the same cases each run, and schemathesis's
# coverage phase of boundary cases, malformed headers among them: 5 min 26 s on 2 cores).
MAX_EXAMPLES = int(os.environ.get("EMBEDQ_FUZZ_EXAMPLES", "25"))
DEEP = os.environ.get("EMBEDQ_FUZZ_DEEP") == "1"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_api(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """Yield an API process with no worker behind it, whose sync routes give up (504) after 0.3 s."""
    process = start_api({**service_env, "EMBEDQ_SYNC_TIMEOUT_S": "0.3", "EMBEDQ_AUTH_DISABLED": "true"})
    yield process
    process.stop()


# The schema the API process serves, built in-process (schemathesis's lazy fixture loader does not work with
# pytest 9.2). The coverage phase sends hundreds of boundary cases per operation: bounded fuzzing fits CI.
schema = schemathesis.openapi.from_dict(
    create_app().openapi(), config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": DEEP}}})
)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_within_its_schema_and_never_5xx(
    case: schemathesis.Case, fuzzed_api: ManagedProcess, clean_state: None
) -> None:
    """No 5xx (a 503/504 the schema declares excepted) and no answer outside the schema."""
    response = case.call(base_url=fuzzed_api.base_url, timeout=30)
    if response.status_code in (503, 504):
        assert str(response.status_code) in case.operation.definition.raw.get("responses", {}), response.text
    case.validate_response(response, checks=CHECKS if response.status_code not in (503, 504) else CHECKS[1:])


def test_fuzzed_api_logged_no_unhandled_error(fuzzed_api: ManagedProcess) -> None:
    """Runs after the fuzzing above: no request left a traceback in the API's log, whatever it answered."""
    log = fuzzed_api.log_text()
    assert "Traceback" not in log, fuzzed_api.log_tail(80)
