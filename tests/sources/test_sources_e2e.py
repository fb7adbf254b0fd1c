"""End to end: an API and two worker processes on `bulk` ingest a corpus from a real S3 server (SeaweedFS).

8 Parquet files of 4 row groups each, a JSONL and a CSV file (12,000 short documents of real sentences,
a tiny real model to keep the 2-core test machine's time), sharded over both workers; one worker is
killed with SIGKILL mid-way and the job still ends with every document in once and each chunk exactly
once. Then a re-sync after one file changed, delete_missing, the bad-source 4xx answers, and no
credential in any response, job or log line. A Postgres and Redis of its own (``support.faults``), so no
other test's worker takes these tasks.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from support.faults import FaultStack, fault_stack
from support.flaky_store import Mode, flaky_store
from support.http_files import http_files
from support.processes import EMBEDQ, ManagedProcess, start_api, start_worker
from support.s3 import REGION, S3Server
from support.source_corpus import csv_bytes, documents, jsonl_bytes, parquet_bytes
from support.tiny_models import make_tiny_bert
from support.waiting import wait_job, wait_until

from app.core.queues import TaskName

pytestmark = pytest.mark.e2e

MODEL = "tiny-sources-e2e"
PARQUET_FILES, PARQUET_ROWS, ROW_GROUP = 8, 1000, 250
JSONL_ROWS, CSV_ROWS = 2500, 1500
TOTAL = PARQUET_FILES * PARQUET_ROWS + JSONL_ROWS + CSV_ROWS


@pytest.fixture(scope="module")
def corpus(s3_server: S3Server) -> Iterator[dict[str, list[dict]]]:
    """Upload the corpus under a prefix of its own; yield {object path: its rows}."""
    prefix = f"{s3_server.bucket}/e2e-corpus"
    files = {
        f"{prefix}/part-{n:02d}.parquet": documents(f"p{n}", PARQUET_ROWS, seed=n, sentences=1)
        for n in range(PARQUET_FILES)
    }
    files[f"{prefix}/extra/lines.jsonl"] = documents("j", JSONL_ROWS, seed=100, sentences=1)
    files[f"{prefix}/extra/table.csv"] = documents("c", CSV_ROWS, seed=101, sentences=1)
    client = s3_server.client()
    for path, rows in files.items():
        body = (
            parquet_bytes(rows, ROW_GROUP) if path.endswith(".parquet")
            else jsonl_bytes(rows) if path.endswith(".jsonl") else csv_bytes(rows)
        )  # fmt: skip
        client.pipe(path, body)
    yield files
    client.rm(prefix, recursive=True)


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str], s3_server: S3Server, tmp_path_factory) -> Iterator[FaultStack]:
    credentials = {
        "corpus": {
            "endpoint_url": s3_server.endpoint_url, "region": REGION,
            "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
        }
    }  # fmt: skip
    models = tmp_path_factory.mktemp("source-models")
    make_tiny_bert(models / MODEL, max_seq_length=128)
    with fault_stack(service_env) as fresh:
        fresh.env.update(
            EMBEDQ_MODELS_DIR=str(models),
            EMBEDQ_SOURCE_CREDENTIALS=json.dumps(credentials),
            EMBEDQ_SOURCE_SHARD_TARGET_BYTES=str(16 * 1024),
            EMBEDQ_WORKER_TORCH_THREADS="1",
            EMBEDQ_SOURCE_FILE_ROOTS=str(models),  # some root: file:// outside it must still be refused
            # A killed worker's messages go back to the queue within seconds, not the default 30.
            EMBEDQ_REDIS_VISIBILITY_TIMEOUT_S="8",
            EMBEDQ_BROKER_HEARTBEAT_S="2",
            EMBEDQ_BROKER_RESTORE_INTERVAL_S="2",
            EMBEDQ_INGEST_BATCH_DOCUMENTS="200",
            EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS="127.0.0.1/32",  # the test's HTTP file server
        )
        yield fresh


@pytest.fixture(scope="module")
def api(stack: FaultStack) -> Iterator[ManagedProcess]:
    process = start_api(stack.env)
    yield process
    process.stop()


class Recorder:
    """Every response body the test got, to look for secrets in."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append(response.text)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def http(api: ManagedProcess, recorder: Recorder) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url or "", timeout=60, event_hooks={"response": [recorder]}) as client:
        chunking = {"max_tokens": 120, "overlap_tokens": 8}
        made = client.post("/collections", json={"name": "corpus", "model": MODEL, "chunking": chunking})
        assert made.status_code == 201, made.text
        yield client


def source(s3_server: S3Server, pattern: str = "", **options: object) -> dict[str, object]:
    """Return the body of a POST /collections/corpus/sources for the corpus (or ``pattern`` under it)."""
    return {"uri": f"s3://{s3_server.bucket}/e2e-corpus/{pattern}", "credentials": "corpus", **options}


def sql(stack: FaultStack, query: str) -> int:
    with stack.engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


def chunks_exactly_once(stack: FaultStack) -> tuple[int, int, int]:
    """Return (chunks, distinct (document, index) pairs, vectors of the active version)."""
    version = sql(stack, "SELECT id FROM collection_versions WHERE status = 'active'")
    return (
        sql(stack, "SELECT count(*) FROM chunks"),
        sql(stack, "SELECT count(*) FROM (SELECT DISTINCT document_id, idx FROM chunks) c"),
        sql(stack, f"SELECT count(DISTINCT chunk_id) FROM collection_vectors_{version}"),
    )


def shards_held_by(worker: ManagedProcess, stack: FaultStack) -> set[int]:
    """Return the shards whose tasks a (killed) worker received and never finished, from its log and the broker.

    Its log names the task ids (Celery's "received" and "succeeded" lines at INFO); the broker's ``unacked``
    hash still holds their messages (acks late), which carry the shard numbers.
    """
    log = worker.log_text()
    received = set(re.findall(rf"Task {TaskName.INGEST_SHARD}\[([0-9a-f-]+)\] received", log))
    finished = set(re.findall(rf"Task {TaskName.INGEST_SHARD}\[([0-9a-f-]+)\] (?:succeeded|failed|raised)", log))
    held = set()
    for value in stack.redis_client().hvals("unacked"):
        message = json.loads(value)[0]
        if message["headers"]["id"] in received - finished:
            args = json.loads(base64.b64decode(message["body"]))[0]
            held.add(int(args[1]))
    return held


def started_unfinished_shards(stack: FaultStack) -> set[int]:
    """Return the shards a delivery has counted (started) and none has finished yet."""
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT seq FROM ingest_shards WHERE state = 'pending' AND attempts >= 1"))
        return set(rows.scalars())


def test_two_workers_read_the_corpus_once_though_one_is_killed(
    stack: FaultStack, http: httpx.Client, corpus: dict, s3_server: S3Server, recorder: Recorder
) -> None:
    workers = [start_worker(stack.env, queues=["bulk"]) for _ in range(2)]
    try:
        started = time.monotonic()
        posted = http.post("/collections/corpus/sources", json=source(s3_server))
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]
        # Mid-way through the shards: the killed worker most likely holds one, and batches wait behind them.
        wait_until(
            lambda: http.get(f"/jobs/{job_id}").json(), 120,
            lambda job: f"the shards were not read in 120 s: {job}\n{workers[0].log_tail()}\n{workers[1].log_tail()}",
            until=lambda job: (job["ingest"]["shards"] or {"done": 0})["done"] >= 20, interval=0.05,
        )  # fmt: skip
        workers[0].kill()  # SIGKILL, mid-way: whatever shard or batch it held goes back to the queue unacked
        # The shards the killed worker had started and not finished: these must be read again.
        cut_off = shards_held_by(workers[0], stack) & started_unfinished_shards(stack)
        killed_at = http.get(f"/jobs/{job_id}").json()["ingest"]["shards"]["done"]
        job = wait_job(http, job_id, timeout=150, interval=0.5)
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            worker.stop()
    assert (job["status"], job["counts"]) == ("succeeded", {"total": TOTAL, "done": TOTAL, "failed": 0}), job
    shards = job["ingest"]["shards"]
    # 16 KiB shards: each Parquet row group alone, the JSONL and CSV files in byte ranges.
    assert shards["done"] == shards["total"] >= PARQUET_FILES * 4 + 4 and shards["failed"] == 0
    assert sql(stack, "SELECT count(*) FROM documents") == TOTAL
    chunks, distinct, vectors = chunks_exactly_once(stack)
    assert chunks == distinct == vectors == job["ingest"]["chunks"]["done"] >= TOTAL
    with stack.engine.connect() as conn:
        redone = set(conn.execute(text("SELECT seq FROM ingest_shards WHERE attempts > 1")).scalars())
    assert cut_off <= redone, f"the killed worker's shards {sorted(cut_off - redone)} were not read again"
    print(f"\n[sources] {TOTAL} documents, {chunks} chunks, {shards['total']} shards in {elapsed:.0f}s with 2 workers; "
          f"worker killed after {killed_at} shards, amid {sorted(cut_off)}; {sorted(redone)} read twice")  # fmt: skip
    search = http.post("/collections/corpus/search", json={"vector": [0.1] * 32, "top_k": 3})
    assert search.status_code == 200 and len(search.json()["data"]) == 3


def test_a_resync_after_one_file_changed_embeds_only_its_changed_documents(
    stack: FaultStack, http: httpx.Client, corpus: dict, s3_server: S3Server
) -> None:
    path = f"{s3_server.bucket}/e2e-corpus/part-03.parquet"
    rows = [dict(r) for r in corpus[path]]
    for n in (10, 600, 999):
        rows[n]["text"] += " It changed."
    s3_server.client().pipe(path, parquet_bytes(rows, ROW_GROUP))
    chunks_before = sql(stack, "SELECT max(id) FROM chunks")
    worker = start_worker(stack.env, queues=["bulk"])
    try:
        posted = http.post("/collections/corpus/sources", json=source(s3_server))
        assert posted.status_code == 202, posted.text
        job = wait_job(http, posted.json()["id"], timeout=120)
        assert job["status"] == "succeeded" and job["counts"]["total"] == PARQUET_ROWS, job
        assert job["ingest"]["skipped"] == PARQUET_ROWS - 3 and job["ingest"]["shards"]["total"] == 4
        assert "9 source objects unchanged" in job["message"]
        renewed = sql(stack, f"SELECT count(DISTINCT document_id) FROM chunks WHERE id > {chunks_before}")
        assert renewed == 3
        assert len(set(chunks_exactly_once(stack))) == 1

        s3_server.client().rm(f"{s3_server.bucket}/e2e-corpus/extra/table.csv")
        pruned = http.post("/collections/corpus/sources", json=source(s3_server, delete_missing=True))
        job = wait_job(http, pruned.json()["id"], timeout=120)
        assert job["status"] == "succeeded" and f"{CSV_ROWS} documents of vanished objects removed" in job["message"]
        assert sql(stack, "SELECT count(*) FROM documents") == TOTAL - CSV_ROWS
        assert len(set(chunks_exactly_once(stack))) == 1
    finally:
        worker.stop()


def test_parquet_is_an_upload_format_over_http(http: httpx.Client) -> None:
    body = parquet_bytes(documents("upload", 40), row_group_size=16)
    posted = http.post(
        "/collections/corpus/documents", content=body, headers={"Content-Type": "application/vnd.apache.parquet"}
    )
    assert posted.status_code == 202 and posted.json()["counts"]["total"] == 40, posted.text
    assert posted.json()["ingest"]["input_complete"] and posted.json()["ingest"]["shards"] is None
    bad = http.post("/collections/corpus/documents", params={"format": "parquet"}, content=b"not parquet at all")
    assert bad.status_code == 422 and "not a readable Parquet file" in bad.json()["detail"]


def test_a_store_that_stops_answering_for_a_while_loses_nothing(
    stack: FaultStack, http: httpx.Client, s3_server: S3Server
) -> None:
    prefix = f"{s3_server.bucket}/e2e-flaky"
    files = {f"{prefix}/part-{n}.jsonl": documents(f"fl{n}", 300, seed=200 + n, sentences=1) for n in range(3)}
    for path, rows in files.items():
        s3_server.client().pipe(path, jsonl_bytes(rows))
    made = http.post("/collections", json={"name": "flaky", "model": MODEL, "chunking": {"max_tokens": 120}})
    assert made.status_code == 201, made.text
    with flaky_store(s3_server.endpoint_url, Mode.DOWN) as store:
        # The worker reads the store through the forwarder; the API checks the source on the store itself.
        through = {
            "corpus": {
                "endpoint_url": store.endpoint_url, "region": REGION,
                "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
            }
        }  # fmt: skip
        env = {**stack.env, "EMBEDQ_SOURCE_CREDENTIALS": json.dumps(through), "EMBEDQ_SOURCE_RETRY_DELAY_S": "1",
               "EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS": "6"}  # fmt: skip
        worker = start_worker(env, queues=["bulk"])
        try:
            posted = http.post("/collections/flaky/sources", json={"uri": f"s3://{prefix}/", "credentials": "corpus"})
            assert posted.status_code == 202, posted.text
            job_id = posted.json()["id"]
            # Down: the plan's listing is not answered, and the plan is sent back to list again.
            wait_until(worker.log_text, 60, lambda log: f"the listing was never retried:\n{log[-3000:]}",
                       until=lambda log: "listing 1 of 6, again in 1 s" in log)  # fmt: skip
            store.set(Mode.OBJECTS_DOWN)  # listings answered, object reads cut: a shard is sent back
            wait_until(worker.log_text, 90, lambda log: f"no shard was sent back:\n{log[-3000:]}",
                       until=lambda log: "read 1 of 6, read again in 1 s" in log)  # fmt: skip
            store.set(Mode.UP)
            job = wait_job(http, job_id, timeout=120)
        finally:
            worker.stop()
    total = sum(len(rows) for rows in files.values())
    assert (job["status"], job["counts"]) == ("succeeded", {"total": total, "done": total, "failed": 0}), job
    assert job["ingest"]["shards"]["failed"] == 0 and job["ingest"]["errors"] == []
    assert sql(stack, f"SELECT max(attempts) FROM ingest_shards WHERE job_id = '{job_id}'") >= 2
    log = worker.log_text()
    assert store.refused >= 2
    assert s3_server.secret_key not in log and s3_server.access_key not in log
    flaky = "SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id WHERE c.name = 'flaky'"
    assert sql(stack, flaky) == total


def test_an_https_file_is_read_by_the_workers_in_row_group_shards(
    stack: FaultStack, http: httpx.Client, tmp_path: Path
) -> None:
    rows = documents("web", 600, seed=300, sentences=1)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "corpus.parquet").write_bytes(parquet_bytes(rows, 150))
    made = http.post("/collections", json={"name": "web", "model": MODEL, "chunking": {"max_tokens": 120}})
    assert made.status_code == 201, made.text
    with http_files(tmp_path / "web", "unused-token") as base:
        worker = start_worker(stack.env, queues=["bulk"])
        try:
            posted = http.post("/collections/web/sources", json={"uri": f"{base}/corpus.parquet"})
            assert posted.status_code == 202, posted.text
            job = wait_job(http, posted.json()["id"], timeout=120)
        finally:
            worker.stop()
    assert (job["status"], job["counts"]) == ("succeeded", {"total": 600, "done": 600, "failed": 0}), job
    assert job["ingest"]["shards"]["total"] == 4  # 16 KiB shards: each 150-row group alone


def test_the_cli_ingests_an_s3_source_and_waits_with_progress(
    stack: FaultStack, api: ManagedProcess, s3_server: S3Server
) -> None:
    prefix = f"{s3_server.bucket}/cli-corpus"
    s3_server.client().pipe(f"{prefix}/a.parquet", parquet_bytes(documents("cli", 300, sentences=1), 100))
    env = {**stack.env, "EMBEDQ_API_URL": api.base_url or ""}
    worker = start_worker(stack.env, queues=["bulk"])
    try:
        command = [str(EMBEDQ), "ingest", f"s3://{prefix}/", "--collection", "cli", "--model", MODEL]
        done = subprocess.run(
            [*command, "--credentials", "corpus", "--wait"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        worker.stop()
        s3_server.client().rm(prefix, recursive=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created collection cli" in done.stdout and "succeeded 300/300 documents" in done.stdout, done.stdout
    assert "ingested 300 of 300 documents" in done.stdout
    failed = subprocess.run(
        [str(EMBEDQ), "ingest", f"s3://{prefix}/missing/", "--collection", "cli", "--credentials", "corpus"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode != 0 and "422" in failed.stderr and s3_server.secret_key not in failed.stderr


def test_bad_sources_are_4xx_and_no_credential_is_ever_shown(
    stack: FaultStack, http: httpx.Client, api: ManagedProcess, corpus: dict, s3_server: S3Server, recorder: Recorder
) -> None:
    bucket = s3_server.bucket
    cases = {
        "ftp://example.com/x/": 422,  # unknown scheme
        "file:///etc/": 403,  # outside EMBEDQ_SOURCE_FILE_ROOTS
        f"file://{Path(stack.env['EMBEDQ_MODELS_DIR']).parent}/": 403,  # the root's parent
        f"s3://{bucket}/e2e-corpus/*.json": 422,  # nothing matches
        "s3://no-such-bucket/x/": 422,  # the store refuses
    }
    for uri, status in cases.items():
        answer = http.post("/collections/corpus/sources", json={"uri": uri, "credentials": "corpus"})
        assert answer.status_code == status, (uri, answer.text)
        assert answer.json()["detail"], answer.text
    columns = http.post("/collections/corpus/sources", json=source(s3_server, "*.parquet", id_field="key"))
    assert columns.status_code == 422 and "no key column" in columns.json()["detail"]
    unknown = http.post("/collections/corpus/sources", json={"uri": f"s3://{bucket}/e2e-corpus/", "credentials": "x"})
    assert unknown.status_code == 422 and "corpus" in unknown.json()["detail"]
    listed = http.get("/jobs", params={"limit": 100})
    for job in listed.json()["data"]:
        http.get(f"/jobs/{job['id']}/errors")

    secrets = [s3_server.secret_key, s3_server.access_key, s3_server.endpoint_url.split("//")[1]]
    bodies = "\n".join(recorder.bodies)
    assert bodies and not [s for s in secrets if s in bodies], "a credential or the endpoint was in a response"
    with stack.engine.connect() as conn:
        stored = conn.execute(text("SELECT params::text || coalesce(message, '') || coalesce(error, '') FROM jobs"))
        stored_text = "\n".join(r[0] for r in stored) + "\n".join(
            r[0] for r in conn.execute(text("SELECT error FROM ingest_errors"))
        )
    assert not [s for s in secrets[:2] if s in stored_text], "a credential is stored in a job"
    logs = [p for p in (Path(stack.env["EMBEDQ_STATE_DIR"]) / "logs").glob("*.log")]
    # The API's, and those of the workers the tests before this one ran (in file order: all of them).
    assert any(p.name.startswith("api-") for p in logs)
    leaked = [p.name for p in logs if any(s in p.read_text(errors="replace") for s in secrets[:2])]
    assert not leaked, f"a credential is in the logs of {leaked}"
