"""Hostile input against a real API process (real Postgres and Redis; a sync worker only where a model must run).

Every bullet of issue 8's "Hostile input": body and upload size limits (413 without reading the body),
JSON nesting and string limits, non-UTF-8 uploads, NUL characters, 100k-character inputs, 10,000 tiny
inputs, unknown fields, numbers out of range, and names that must never reach the filesystem.
"""

from __future__ import annotations

import json
import secrets
import select
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from support.processes import ManagedProcess, start_api
from support.sync_stack import sync_queue_env, sync_stack

from app.catalog.resolver import InvalidModelNameError, resolve_model
from app.cli.main import main as cli
from app.core.config import Settings
from app.main import create_app

pytestmark = pytest.mark.e2e  # real API processes

REQUEST_LIMIT = 4 * 1024 * 1024
UPLOAD_LIMIT = 8 * 1024 * 1024
NDJSON = {"content-type": "application/x-ndjson"}
STRING_LIMIT = 300_000
TRAINING_LIMIT = 1024 * 1024
LIMITS_ENV = {
    "EMBEDQ_MAX_REQUEST_BYTES": str(REQUEST_LIMIT),
    "EMBEDQ_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
    "EMBEDQ_MAX_JSON_STRING_CHARS": str(STRING_LIMIT),
    "EMBEDQ_TRAINING_MAX_UPLOAD_BYTES": str(TRAINING_LIMIT),
    "EMBEDQ_AUTH_DISABLED": "true",
}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def limited_api(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """Yield an API with small body limits and no worker behind it (sync routes would 504 after 2 s)."""
    process = start_api({**service_env, **LIMITS_ENV, "EMBEDQ_SYNC_TIMEOUT_S": "2"})
    yield process
    process.stop()


@pytest.fixture
def http(limited_api: ManagedProcess, clean_state: None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited_api.base_url, timeout=60) as client:
        yield client


@pytest.fixture
def collection(http: httpx.Client) -> str:
    name = f"hostile-{secrets.token_hex(3)}"
    r = http.post("/collections", json={"name": name})
    assert r.status_code == 201, r.text
    return name


def send_chunked(base_url: str, path: str, chunks: Iterator[bytes], content_type: str) -> tuple[int, bytes, int]:
    """POST ``chunks`` with Transfer-Encoding: chunked until the server answers; return (status, body, bytes sent).

    A raw socket, so the test sees the answer the server sends before the body ends (httpx would fail the
    write first) and can count how much of the body was sent at all.
    """
    url = urlsplit(base_url)
    sent = 0
    answer = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before the body ended
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            answer += more
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), body, sent


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def endless(piece: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


# --- size limits -------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_before_it_is_read(http: httpx.Client) -> None:
    body = json.dumps({"input": ["x" * 1000] * (REQUEST_LIMIT // 1000 + 10)})
    r = http.post("/jobs/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "EMBEDQ_MAX_REQUEST_BYTES" in r.json()["detail"]
    r = http.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "EMBEDQ_MAX_REQUEST_BYTES" in r.json()["error"]["message"]


def test_a_chunked_body_is_cut_off_at_the_limit(limited_api: ManagedProcess, clean_state: None) -> None:
    # 64 MiB offered in 64 KiB chunks: the 413 comes once 4 MiB have arrived, the rest is never sent.
    status, body, sent = send_chunked(
        limited_api.base_url, "/jobs/embeddings", endless(b" " * 65536, 64 * MIB), "application/json"
    )
    assert status == 413 and b"EMBEDQ_MAX_REQUEST_BYTES" in body
    assert sent < 16 * MIB, f"{sent} bytes went out before the 413"


def test_uploads_have_their_own_larger_limit_and_keep_what_arrived(
    http: httpx.Client, limited_api: ManagedProcess, collection: str
) -> None:
    # Over the request limit, under the upload limit: accepted.
    line = json.dumps({"id": "{}", "text": "y" * 1000}) + "\n"
    body = "".join(line.replace("{}", f"d{i}") for i in range(REQUEST_LIMIT // len(line) + 100)).encode()
    r = http.post(
        f"/collections/{collection}/documents", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 202, r.text
    # Over the upload limit, streamed: 413, and the job keeps the documents before the cut.
    lines = (line.replace("{}", f"e{i}").encode() for i in range(10 * UPLOAD_LIMIT // len(line)))
    status, answer, sent = send_chunked(
        limited_api.base_url, f"/collections/{collection}/documents", lines, "application/x-ndjson"
    )
    assert status == 413 and b"EMBEDQ_MAX_UPLOAD_BYTES" in answer, answer
    assert sent < 4 * UPLOAD_LIMIT
    job_id = json.loads(answer)["detail"].split("job ")[1].split(" ")[0]
    job = http.get(f"/jobs/{job_id}").json()
    assert job["ingest"]["input_complete"] and job["counts"]["total"] > 0
    errors = http.get(f"/jobs/{job_id}/errors").json()["data"]
    assert any("EMBEDQ_MAX_UPLOAD_BYTES" in e["error"] for e in errors)


def test_fine_tuning_bodies_are_limited_by_the_training_setting(
    http: httpx.Client, limited_api: ManagedProcess
) -> None:
    pairs = "what is it\tit is a thing\n" * (2 * TRAINING_LIMIT // 25)
    r = http.post("/fine-tune", json={"text_content": pairs, "model_name": "big"})
    assert r.status_code == 413 and "EMBEDQ_TRAINING_MAX_UPLOAD_BYTES" in r.json()["detail"]
    part = b'--tb\r\nContent-Disposition: form-data; name="file"; filename="p.tsv"\r\n\r\n'
    chunks = iter([part, *endless(b"what is it\tit is a thing\n" * 2000, 4 * TRAINING_LIMIT)])
    status, body, _ = send_chunked(limited_api.base_url, "/fine-tune", chunks, "multipart/form-data; boundary=tb")
    assert status == 413 and b"EMBEDQ_TRAINING_MAX_UPLOAD_BYTES" in body, body


# --- JSON shape --------------------------------------------------------------------------------------------


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("depth", [40, 5000])
def test_json_nested_too_deep_is_a_400(http: httpx.Client, depth: int) -> None:
    body = json.dumps({"name": "deep", "metadata": nested(depth)}) if depth < 900 else "[" * depth + "]" * depth
    r = http.post("/collections", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "EMBEDQ_MAX_JSON_DEPTH" in r.json()["detail"]


def test_a_string_over_the_limit_is_a_413(http: httpx.Client) -> None:
    r = http.post("/collections", json={"name": "long", "metadata": {"note": "z" * (STRING_LIMIT + 1)}})
    assert r.status_code == 413 and "EMBEDQ_MAX_JSON_STRING_CHARS" in r.json()["detail"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "1" * 320 + ".5"])
def test_non_finite_numbers_are_a_400(http: httpx.Client, number: str) -> None:
    body = f'{{"name": "n", "metadata": {{"x": {number}}}}}'
    r = http.post("/collections", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "finite" in r.json()["detail"]
    body = f'{{"vector": [0.1, {number}], "top_k": 1}}'
    r = http.post("/collections/any/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400


# --- NUL and invalid Unicode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs/embeddings", {"input": ["a\u0000b"]}),
        ("/collections", {"name": "nul", "metadata": {"k\u0000": 1}}),
        ("/collections", {"name": "nul", "model": "a\u0000b"}),
        ("/fine-tune", {"text_content": "q\tp\u0000", "model_name": "m"}),
    ],
)
def test_nul_in_a_json_body_is_a_400(http: httpx.Client, path: str, body: dict) -> None:
    r = http.post(path, json=body)
    assert r.status_code == 400 and "NUL" in r.json()["detail"]


def test_nul_under_v1_is_a_400_in_openai_shape(http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"input": "a\u0000b"})
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path", ["/collections/a%00b", "/jobs?kind=%00", "/collections/x/documents?document_id=a%00", "/v1/models/a%00"]
)
def test_nul_in_the_url_is_a_400(http: httpx.Client, path: str) -> None:
    r = http.get(path) if "documents" not in path else http.post(path, content=b"t")
    assert r.status_code == 400 and "NUL" in r.text


def test_a_lone_surrogate_is_a_400(http: httpx.Client) -> None:
    body = '{"input": ["ok", "\\ud800 half a pair"]}'
    r = http.post("/jobs/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["detail"]


# --- uploads: bad bytes fail their line only ---------------------------------------------------------------


def test_non_utf8_and_nul_fail_their_line_not_the_upload(http: httpx.Client, collection: str) -> None:
    body = b"\n".join(
        [
            b'{"id": "a", "text": "fine"}',
            b'{"id": "b", "text": "caf\xe9 latin-1"}',
            b'{"id": "c", "text": "nul \\u0000 inside"}',
            b'{"id": "d", "text": "\xff\xfe"}',
            b'{"id": "e", "text": "also fine"}',
            b'{"id": "f\\ud800", "text": "half a surrogate pair in the id"}',
        ]
    )
    r = http.post(
        f"/collections/{collection}/documents", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["counts"]["total"] == 6 and job["counts"]["failed"] == 4
    errors = {e["line"]: e["error"] for e in http.get(f"/jobs/{job['id']}/errors").json()["data"]}
    assert "not valid UTF-8" in errors[2] and "not valid UTF-8" in errors[4] and "NUL" in errors[3]
    assert "surrogate" in errors[6]


def test_text_lines_and_csv_report_bad_bytes_per_line(http: httpx.Client, collection: str) -> None:
    text = b"first line\nsecond \xc3\x28 broken\nthird line\n"
    r = http.post(
        f"/collections/{collection}/documents?text_mode=line&document_id=lines.txt",
        content=text,
        headers={"content-type": "text/plain"},
    )
    assert r.status_code == 202 and r.json()["counts"] == {"total": 3, "done": 0, "failed": 1}
    csv = b"id,text\n1,good\n2,bad \xe9\n3,good too\n"
    r = http.post(f"/collections/{collection}/documents", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 202 and r.json()["counts"]["failed"] == 1
    errors = http.get(f"/jobs/{r.json()['id']}/errors").json()["data"]
    assert errors[0]["line"] == 3 and "UTF-8" in errors[0]["error"]


# --- many and long inputs ----------------------------------------------------------------------------------


def test_ten_thousand_tiny_inputs_name_the_limit(http: httpx.Client) -> None:
    tiny = ["x"] * 10_000
    r = http.post("/jobs/embeddings", json={"input": tiny})
    assert r.status_code == 422 and "EMBEDQ_MAX_INPUTS_PER_JOB" in r.json()["detail"]
    r = http.post("/v1/embeddings", json={"input": tiny})
    assert r.status_code == 400 and "EMBEDQ_MAX_INPUTS_PER_REQUEST" in r.json()["error"]["message"]
    r = http.post("/vectorize-batch", json={"items": tiny})
    assert r.status_code == 400 and "EMBEDQ_MAX_INPUTS_PER_REQUEST" in r.json()["detail"]


def test_inputs_over_max_input_chars_are_refused_and_100k_ones_accepted(http: httpx.Client) -> None:
    r = http.post("/jobs/embeddings", json={"input": ["w " * 50_000]})
    assert r.status_code == 202, r.text
    over = "w" * 200_001  # EMBEDQ_MAX_INPUT_CHARS defaults to 200,000
    r = http.post("/jobs/embeddings", json={"input": [over]})
    assert r.status_code == 422 and "EMBEDQ_MAX_INPUT_CHARS" in r.json()["detail"]
    r = http.post("/v1/embeddings", json={"input": over})
    assert r.status_code == 400 and "EMBEDQ_MAX_INPUT_CHARS" in r.json()["error"]["message"]


# --- unknown fields ----------------------------------------------------------------------------------------


def test_every_request_body_forbids_unknown_fields_but_openai_embeddings() -> None:
    """extra="forbid" everywhere (a typo is a 422 naming it), except /v1/embeddings, which OpenAI clients
    send fields to that embedq does not know (OpenAI's API ignores unknown fields too), and /v1/rerank, to
    which Cohere clients send Cohere's options (rank_fields, max_chunks_per_doc) likewise."""
    spec = create_app().openapi()
    schemas = spec["components"]["schemas"]
    lenient = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            schema = content["schema"]
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
            if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
                lenient.append(f"{method.upper()} {path}")
    assert sorted(lenient) == ["POST /v1/embeddings", "POST /v1/rerank"]


def test_unknown_fields_are_a_422_naming_them(http: httpx.Client) -> None:
    for path, body in [
        ("/jobs/embeddings", {"input": ["a"], "inptu": 1}),
        ("/collections", {"name": "c", "chunking": {"max_tokens": 64, "overlpa": 1}}),
        ("/fine-tune", {"text_content": "q\tp", "model_name": "m", "epoch": 2}),
    ]:
        r = http.post(path, json=body)
        assert r.status_code == 422 and "Extra inputs are not permitted" in r.text, (path, r.text)


# --- numbers out of range ----------------------------------------------------------------------------------


def _numeric_fields(schema: dict, schemas: dict, where: str) -> Iterator[tuple[str, dict]]:
    if "$ref" in schema:
        yield from _numeric_fields(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas, where)
        return
    for option in schema.get("anyOf", []):
        yield from _numeric_fields(option, schemas, where)
    if schema.get("type") in ("integer", "number"):
        yield where, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _numeric_fields(prop, schemas, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _numeric_fields(schema["items"], schemas, f"{where}[]")


# A query vector's floats are any finite number (NaN and Infinity are refused as JSON); an upload's
# progress milestones are list items that FastAPI's Query cannot bound: JobNotifications checks them (422).
UNBOUNDED_ON_PURPOSE = (".vector[]", "?progress_milestones[]")


def test_every_numeric_parameter_has_both_bounds() -> None:
    spec = create_app().openapi()
    schemas = spec["components"]["schemas"]
    unbounded = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            fields = [
                item
                for param in operation.get("parameters", [])
                for item in _numeric_fields(param["schema"], schemas, f"{where} ?{param['name']}")
            ]
            for content in operation.get("requestBody", {}).get("content", {}).values():
                fields += _numeric_fields(content["schema"], schemas, where)
            for name, schema in fields:
                low = "minimum" in schema or "exclusiveMinimum" in schema
                high = "maximum" in schema or "exclusiveMaximum" in schema
                if not (low and high) and not name.endswith(UNBOUNDED_ON_PURPOSE):
                    unbounded.append(name)
    assert sorted(set(unbounded)) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/fine-tune", {"epochs": 0}),
        ("/fine-tune", {"epochs": 10**6}),
        ("/fine-tune", {"batch_size": 1}),
        ("/fine-tune", {"learning_rate": 0}),
        ("/fine-tune", {"learning_rate": 5}),
        ("/fine-tune", {"seed": -1}),
        ("/fine-tune", {"seed": 10**30}),
        ("/fine-tune", {"max_seq_length": 10**9}),
        ("/fine-tune", {"eval_share": 1}),
        ("/fine-tune-lora", {"r": 0}),
        ("/fine-tune-lora", {"r": 10**6}),
        ("/fine-tune-lora", {"lora_alpha": 1e300}),
        ("/fine-tune-lora", {"lora_dropout": 1}),
        ("/collections", {"chunking": {"max_tokens": 7}}),
        ("/collections", {"chunking": {"max_tokens": 10**9}}),
        ("/collections", {"chunking": {"max_tokens": 64, "overlap_tokens": 33}}),
        ("/collections", {"chunking": {"max_tokens": 64, "overlap_tokens": -1}}),
        ("/collections/c/search", {"query": "q", "top_k": 0}),
        ("/collections/c/search", {"query": "q", "top_k": 10**30}),
        ("/v1/embeddings", {"input": "a", "dimensions": 0}),
        ("/v1/embeddings", {"input": "a", "dimensions": 10**12}),
        ("/v1/embeddings", {"input": [-1, 5]}),
        ("/v1/embeddings", {"input": [10**12]}),
        ("/rerank", {"query": "q", "candidates": ["a"], "batch_size": 0}),
        ("/webhook-endpoints/00000000-0000-0000-0000-000000000000/rotate-secret", {"overlap_seconds": -1}),
    ],
)
def test_numbers_out_of_range_are_a_4xx_naming_the_field(http: httpx.Client, path: str, body: dict) -> None:
    base = {"/fine-tune": {"text_content": "q\tp", "model_name": "m"}, "/collections": {"name": "c"}}
    base["/fine-tune-lora"] = base["/fine-tune"]
    r = http.post(path, json={**base.get(path, {}), **body})
    assert r.status_code in (400, 422), r.text
    field = list(body if not isinstance(body.get("chunking"), dict) else body["chunking"])[-1]
    assert field in r.text


@pytest.mark.parametrize(
    "query", ["/jobs?offset=-1", "/jobs?offset=99999999999999999999", "/jobs?limit=0", "/collections?limit=10000"]
)
def test_query_numbers_out_of_range_are_a_422(http: httpx.Client, query: str) -> None:
    assert http.get(query).status_code == 422


# --- names that must never reach the filesystem ------------------------------------------------------------

BAD_NAMES = ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", "a\\..\\b", "x" * 5000, "a/b/c", ".hidden"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_resolver_refuses_paths(name: str, tmp_path) -> None:
    with pytest.raises(InvalidModelNameError):
        resolve_model(name, Settings(models_dir=tmp_path))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_model_names_in_requests_are_a_4xx(http: httpx.Client, name: str) -> None:
    assert http.post("/jobs/embeddings", json={"input": ["a"], "model": name}).status_code in (400, 404, 422)
    assert http.post("/collections", json={"name": "m", "model": name}).status_code in (400, 404, 422)
    r = http.post("/v1/embeddings", json={"input": "a", "model": name})
    assert r.status_code in (400, 404) and "error" in r.json()


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "a%5C..%5Cb", "x" * 5000])
def test_model_ids_in_urls_are_a_4xx(http: httpx.Client, name: str) -> None:
    assert http.get(f"/v1/models/{name}").status_code in (400, 404)


@pytest.mark.parametrize("alias", ["../evil", "/abs", "a/b", "..", ".hidden", "a" * 101, "a\\b", "ok\u0000"])
def test_fine_tune_aliases_cannot_name_a_path(http: httpx.Client, alias: str) -> None:
    r = http.post("/fine-tune", json={"text_content": "q\tp\n" * 20, "model_name": alias})
    assert r.status_code in (400, 422) and ("model_name" in r.text or "NUL" in r.text)
    form = {"model_name": alias}
    r = http.post("/fine-tune-lora", data=form, files={"file": ("pairs.tsv", b"q\tp\n" * 20)})
    assert r.status_code in (400, 422), r.text
    r = http.post("/fine-tune", json={"text_content": "q\tp\n" * 20, "model_name": "fine", "base_model": alias})
    assert r.status_code in (400, 404, 422), r.text


def test_upload_file_names_only_name_documents(http: httpx.Client, collection: str) -> None:
    """A multipart file name becomes a document id (its last segment), never a path on the server."""
    names = [b"../../../etc/cron.d/evil.txt", b"/abs/path/notes.md", b"bad\x00name.txt", b"x" * 600 + b".txt"]
    boundary = b"hostileboundary"
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: text/plain\r\n\r\ntext number %d\r\n" % (boundary, name, i)
        for i, name in enumerate(names)
    ]
    body = b"".join(parts) + b"--%s--\r\n" % boundary
    headers = {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    r = http.post(f"/collections/{collection}/documents", content=body, headers=headers)
    assert r.status_code == 202, r.text
    job = r.json()
    # evil.txt and notes.md are documents named so; the NUL name and the 600-character one fail alone.
    assert job["counts"] == {"total": 4, "done": 0, "failed": 2}
    errors = [e["error"] for e in http.get(f"/jobs/{job['id']}/errors").json()["data"]]
    assert all("id longer than" in e for e in errors), errors


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "org/../x", "a\x00b", "o/" + "x" * 300])
def test_models_pull_refuses_paths(name: str) -> None:
    result = CliRunner().invoke(cli, ["models", "pull", name, "--models-dir"])
    assert result.exit_code == 2 and "invalid model name" in result.output


# --- with a model: truncation as the settings say, unknown fields ignored under /v1 ------------------------


@pytest.fixture(scope="module")
def sync_apis(service_env: dict[str, str]) -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    """Yield (an API that truncates, one with EMBEDQ_TRUNCATE=false), both served by one sync worker."""
    env = sync_queue_env(service_env, "hostile", EMBEDQ_AUTH_DISABLED="true")
    with sync_stack(env, {}, {"EMBEDQ_TRUNCATE": "false"}, concurrency=4) as stack:
        truncating, strict = stack.apis
        yield truncating, strict


def test_100k_character_inputs_are_truncated_or_refused_as_the_settings_say(
    sync_apis: tuple[ManagedProcess, ManagedProcess],
) -> None:
    truncating, strict = sync_apis
    long_text = "word " * 20_000  # 100,000 characters
    r = httpx.post(
        f"{truncating.base_url}/v1/embeddings", json={"input": [long_text, "short"], "user_tag": 1}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-embedq-truncated-inputs"] == "1" and len(r.json()["data"]) == 2
    r = httpx.post(f"{strict.base_url}/v1/embeddings", json={"input": long_text}, timeout=120)
    assert r.status_code == 400 and "EMBEDQ_TRUNCATE" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=" + "b" * 300,
        'multipart/form-data; boundary=""',
        "application/x-unknown",
        "text/plain; charset=ebcdic",
    ],
)
def test_odd_content_types_are_a_4xx(http: httpx.Client, collection: str, content_type: str) -> None:
    headers = {"content-type": content_type}
    body = b"--" + b"b" * 300 + b"\r\nnot really multipart\r\n"
    r = http.post(f"/collections/{collection}/documents", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    r = http.post("/fine-tune", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_name", b"bad\xffname"),
        ("model_name", b"nul\x00"),
        ("text_content", b"q\tp\x00\n" * 20),
        ("epochs", b"1e400"),
        ("epochs", b"NaN"),
    ],
)
def test_hostile_fine_tuning_form_fields_are_a_4xx(http: httpx.Client, field: str, value: bytes) -> None:
    """Form fields are decoded by Starlette (a bad UTF-8 byte becomes U+FFFD), then validated like JSON."""
    fields = {"model_name": b"ok-name", "text_content": b"query\tpassage\n" * 20, field: value}
    boundary = b"formboundary"
    body = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (boundary, name.encode(), data)
        for name, data in fields.items()
    )
    body += b"--%s--\r\n" % boundary
    r = http.post("/fine-tune", content=body, headers={"content-type": "multipart/form-data; boundary=formboundary"})
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize(
    "pairs", [b"q\tp\x00\n" * 20, b"q\tp\xff\n" * 20, b"\x00" * 100], ids=["nul-in-lines", "latin-1", "all-nul"]
)
def test_hostile_fine_tuning_files_are_a_4xx(http: httpx.Client, pairs: bytes) -> None:
    r = http.post("/fine-tune", data={"model_name": "ok-name"}, files={"file": ("pairs.tsv", pairs)})
    assert 400 <= r.status_code < 500, r.text


# --- encodings: a JSON body is strict UTF-8 before anything looks at it ------------------------------------

# Python's JSON parser reads every one of these; a check that scanned the bytes as UTF-8 would not see its text.
WRONG_ENCODINGS = ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
# Streamed per document (each line reports its own bad bytes: test_non_utf8_and_nul_fail_their_line_not_the_upload).
STREAMED_JSON_ROUTES = {"POST /collections/{name}/documents"}


def json_routes() -> list[tuple[str, str]]:
    """Return (method, path) of every route that takes a JSON body, path parameters filled in."""
    spec = create_app().openapi()
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            if f"{method.upper()} {path}" in STREAMED_JSON_ROUTES:
                continue
            filled = path.replace("{name}", "c").replace("{model_id}", "m")
            for param in ("{job_id}", "{endpoint_id}", "{id}", "{delivery_id}"):
                filled = filled.replace(param, "00000000-0000-0000-0000-000000000000")
            routes.append((method.upper(), filled))
    return routes


def error_message(r: httpx.Response) -> str:
    body = r.json()
    return body["error"]["message"] if "error" in body else body["detail"]


def test_the_json_route_list_is_not_empty() -> None:
    routes = json_routes()
    assert ("POST", "/jobs/embeddings") in routes and ("POST", "/v1/embeddings") in routes
    assert ("POST", "/collections/c/search") in routes and len(routes) >= 15


@pytest.mark.parametrize("encoding", WRONG_ENCODINGS)
def test_every_json_route_refuses_a_bom_utf16_and_utf32(http: httpx.Client, encoding: str) -> None:
    body = '{"input": ["ok"], "idempotency_key": "k"}'.encode(encoding)
    wrong = []
    for method, path in json_routes():
        r = http.request(method, path, content=body, headers={"content-type": "application/json"})
        if r.status_code != 400 or "UTF-8" not in error_message(r):
            wrong.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
    assert wrong == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs/embeddings", '{"input":["ok"],"idempotency_key":"\\u0000"}'),
        ("/jobs/embeddings", '{"input":["ok","\\ud800"]}'),
        ("/jobs/embeddings", '{"input":["ok"],"idempotency_key":"\\ud800"}'),
        ("/collections", '{"name":"bom","metadata":{"k":"\\u0000"}}'),
        ("/collections/c/search", '{"query":"q","filter":{"k":"\\ud800"}}'),
        ("/collections/c/search", '{"vector":[NaN]}'),
        ("/v1/embeddings", '{"input":"\\ud800"}'),
        ("/tokenize", '{"input":"\\ud800"}'),
    ],
)
def test_the_issue_16_bodies_behind_a_bom_are_a_400_not_a_500(http: httpx.Client, path: str, body: str) -> None:
    for raw in (body.encode("utf-8-sig"), body.encode("utf-16"), body.encode()):
        r = http.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw[:20], r.text)
        assert any(word in error_message(r) for word in ("UTF-8", "NUL", "surrogate", "finite")), r.text


def test_utf8_encoded_surrogates_and_bad_bytes_are_a_400(http: httpx.Client) -> None:
    # json.loads reads bytes with errors="surrogatepass": ED A0 80 would become a lone surrogate.
    for raw in (b'{"input": ["ok", "\xed\xa0\x80"]}', b'{"input": ["caf\xe9"]}'):
        r = http.post("/jobs/embeddings", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid UTF-8" in r.json()["detail"], r.text
