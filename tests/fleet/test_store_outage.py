"""The artifact store stops answering while a worker installs the model its batch needs: the batch waits the
outage out (its task retried with backoff) and no input fails.

All real: the session's Postgres and Redis, SeaweedFS, an API and a worker process. The worker reaches the
store through a forwarder that cuts every connection while "down" (``support.flaky_store``), as a store
restarting or a network partition does; the API and the push reach the store directly.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
from support.flaky_store import Mode, flaky_store
from support.processes import EMBEDQ, start_api, start_worker
from support.s3 import S3Server
from support.tiny_models import make_tiny_bert
from support.waiting import wait_job, wait_until
from support.worker_metrics import scrape, total

from app.cli.embedded import find_free_port

pytestmark = pytest.mark.e2e

MODEL = "outage-base"


def _dirs(root: Path) -> dict[str, str]:
    for sub in ("state", "models", "hf"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = {"EMBEDQ_STATE_DIR": "state", "EMBEDQ_MODELS_DIR": "models", "HF_HOME": "hf"}
    return {variable: str(root / sub) for variable, sub in names.items()}


def test_a_batch_waits_out_an_artifact_store_outage_and_no_input_fails(
    service_env: dict[str, str], s3_server: S3Server, tmp_path: Path, clean_state
) -> None:
    common = {**service_env, **s3_server.env(f"outage-{secrets.token_hex(4)}"),
              "EMBEDQ_SYNC_QUEUE": f"sync-outage-{secrets.token_hex(3)}"}  # fmt: skip
    ops = {**common, **_dirs(tmp_path / "ops")}
    pushed = subprocess.run(
        [str(EMBEDQ), "models", "push", str(make_tiny_bert(tmp_path / "made" / MODEL)), "--name", MODEL],
        env={**os.environ, **ops}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    texts = [f"text number {i} about a river and a city" for i in range(40)]
    with flaky_store(s3_server.endpoint_url, Mode.DOWN) as store:
        metrics_port = find_free_port()
        worker_env = {**common, **_dirs(tmp_path / "worker"), "EMBEDQ_ARTIFACT_S3_ENDPOINT_URL": store.endpoint_url,
                      "EMBEDQ_WORKER_METRICS_PORT": str(metrics_port)}  # fmt: skip
        api = start_api({**common, **_dirs(tmp_path / "api")})
        worker = start_worker(worker_env, queues=["inference", common["EMBEDQ_SYNC_QUEUE"]], concurrency=2)
        try:
            with httpx.Client(base_url=api.base_url or "", timeout=60) as http:
                posted = http.post("/jobs/embeddings", json={"input": texts, "model": MODEL})
                assert posted.status_code == 202, posted.text
                # The worker cannot install the model: its batch is retried, not failed.
                wait_until(worker.log_text, 120, lambda log: f"no retry for the outage:\n{log[-3000:]}",
                           until=lambda log: "StoreUnavailableError" in log and " retry: Retry in " in log)  # fmt: skip
                assert http.get(f"/jobs/{posted.json()['id']}").json()["counts"]["failed"] == 0
                # A sync request cannot wait minutes: a 503 to retry, within the sync deadline, not a 504 or 500.
                sync = http.post("/v1/embeddings", json={"input": ["a river"], "model": MODEL})
                assert sync.status_code == 503 and "model_store_unavailable" in sync.text, sync.text
                assert sync.headers["Retry-After"] == "30"
                store.set(Mode.UP)
                job = wait_job(http, posted.json()["id"], timeout=240)
                metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                synced = http.post("/v1/embeddings", json={"input": ["a river"], "model": MODEL})
        finally:
            worker.stop()
            api.stop()
    assert (job["status"], job["counts"]) == ("succeeded", {"total": 40, "done": 40, "failed": 0}), job
    assert synced.status_code == 200 and len(synced.json()["data"]) == 1, synced.text
    assert store.refused >= 1
    assert total(metrics, "embedq_worker_store_outages_total", task="embed.batch") >= 1
    assert (Path(worker_env["EMBEDQ_MODELS_DIR"]) / MODEL).is_dir()  # installed once the store answered
