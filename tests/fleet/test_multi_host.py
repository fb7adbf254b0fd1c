"""Two hosts on one machine, all real: models follow the work through the artifact store, and bulk work survives
a host's death.

One Postgres and one Redis (the session's), one S3 server (SeaweedFS), and two "hosts" that share no path:
each has its own EMBEDQ_STATE_DIR, EMBEDQ_MODELS_DIR and Hugging Face cache, and reads models only through the
s3:// store. Host A consumes `training`; host B `inference`, the sync queue and `bulk`; the API has dirs of its
own too. The base model reaches both hosts the way an offline fleet gets it: `embedq models push` from a third
folder. A's side of the comparison is computed in this process from the folder A's training worker kept
(the same runtime, ``workers.runtime``), so B's vectors, served from its download, are compared with the
trained files themselves rather than with another copy of them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, text
from support.processes import EMBEDQ, ManagedProcess, start_api, start_worker
from support.s3 import S3Server
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert
from support.waiting import wait_job, wait_until

from app.catalog import artifacts, model_cache
from app.catalog.repository import RegisteredModelRepository
from app.core.db import session_scope
from workers.runtime import registry

pytestmark = pytest.mark.e2e

BASE = "fleet-base"
TOPICS = "cat dog river mountain city music book water bread train ship garden".split()
PAIRS = [(f"tell me about the {t} number {i}", f"item {i} is about a {t}") for i, t in enumerate(TOPICS * 2)]
TSV = "\n".join(f"{q}\t{p}" for q, p in PAIRS)
TEXTS = ["a cat sleeping by the river", "bread from the garden", "music on a ship"]
NDJSON = {"Content-Type": "application/x-ndjson"}
WORDS = "the a model models embed vector text query document search queue job worker fast small red green".split()


@dataclass
class Fleet:
    api: ManagedProcess
    host_a: ManagedProcess
    host_b: ManagedProcess
    env_a: dict[str, str]
    env_b: dict[str, str]
    models_a: Path
    models_b: Path
    models_api: Path
    store_env: dict[str, str]


def _host_env(common: dict[str, str], root: Path) -> dict[str, str]:
    for sub in ("state", "models", "hf"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        **common,
        "EMBEDQ_STATE_DIR": str(root / "state"),
        "EMBEDQ_MODELS_DIR": str(root / "models"),
        "HF_HOME": str(root / "hf"),
    }


@pytest.fixture
def fleet(service_env: dict[str, str], s3_server: S3Server, tmp_path: Path, clean_state) -> Iterator[Fleet]:
    store_env = s3_server.env(f"fleet-{secrets.token_hex(4)}")
    common = {
        **service_env,
        **store_env,
        "EMBEDQ_SYNC_QUEUE": f"sync-fleet-{secrets.token_hex(3)}",
        "EMBEDQ_ARTIFACT_CHECK_INTERVAL_S": "1",
        "EMBEDQ_TRAINING_PROGRESS_EVERY_STEPS": "1",
        "EMBEDQ_INGEST_BATCH_DOCUMENTS": "40",
        # A killed host's messages go back to the queue within seconds, restored by the live host.
        "EMBEDQ_REDIS_VISIBILITY_TIMEOUT_S": "6",
        "EMBEDQ_BROKER_HEARTBEAT_S": "2",
        "EMBEDQ_BROKER_RESTORE_INTERVAL_S": "1",
    }
    env_ops = _host_env(common, tmp_path / "ops")
    env_api, env_a, env_b = (_host_env(common, tmp_path / name) for name in ("api", "host-a", "host-b"))
    base_folder = make_tiny_bert(tmp_path / "ops" / "made" / BASE)
    pushed = subprocess.run(
        [str(EMBEDQ), "models", "push", str(base_folder), "--name", BASE],
        env={**os.environ, **env_ops}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    processes: list[ManagedProcess] = []
    try:
        processes.append(start_api(env_api))
        processes.append(start_worker(env_a, queues=["training"]))
        processes.append(start_worker(env_b, queues=["inference", env_b["EMBEDQ_SYNC_QUEUE"], "bulk"]))
        yield Fleet(
            *processes,  # type: ignore[arg-type]
            env_a=env_a,
            env_b=env_b,
            models_a=Path(env_a["EMBEDQ_MODELS_DIR"]),
            models_b=Path(env_b["EMBEDQ_MODELS_DIR"]),
            models_api=Path(env_api["EMBEDQ_MODELS_DIR"]),
            store_env=store_env,
        )
    finally:
        for process in reversed(processes):
            process.stop(timeout=60)


def train(client: httpx.Client, path: str, alias: str) -> None:
    body = {"text_content": TSV, "model_name": alias, "base_model": BASE, "batch_size": 8, "learning_rate": 5e-2}
    created = client.post(path, json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["job_id"]
    status = wait_until(
        lambda: client.get(f"/train-status/{job_id}").json(),
        180,
        lambda last: f"training {alias} did not finish: {last}",
        until=lambda s: s["status"] in {"completed", "failed", "cancelled"},
        interval=0.3,
    )
    assert status["status"] == "completed", status


def sync_vectors(client: httpx.Client, alias: str) -> np.ndarray:
    answer = client.post("/v1/embeddings", json={"input": TEXTS, "model": alias})
    assert answer.status_code == 200, answer.text
    return np.asarray([d["embedding"] for d in answer.json()["data"]], dtype=np.float32)


def vectors_from_host_a(alias: str, fleet: Fleet, settings_env: SettingsEnv) -> np.ndarray:
    """Return ``alias``'s vectors from the folder host A's training worker published, with the workers' runtime."""
    settings_env.set(EMBEDQ_MODELS_DIR=str(fleet.models_a), **fleet.store_env)
    registry.unload_all()
    model_cache.forget(alias)
    try:
        return registry.get_encoder(alias).encode(TEXTS)
    finally:
        registry.unload_all()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_b_serves_what_a_trained(
    client: httpx.Client, alias: str, fleet: Fleet, settings_env: SettingsEnv
) -> tuple[float, float]:
    started = time.monotonic()
    served = sync_vectors(client, alias)
    first_answer_s = time.monotonic() - started
    with session_scope() as session:
        row = RegisteredModelRepository(session).registered(alias)
        assert row is not None and row.revision is not None
        revision = row.revision
    assert artifacts.local_revision(fleet.models_b / alias) == revision  # B installed it from the store
    assert artifacts.local_revision(fleet.models_a / alias) == revision  # A kept the folder it published
    assert not (fleet.models_api / alias).exists()  # the API never needs the files
    expected = vectors_from_host_a(alias, fleet, settings_env)
    similarity = cosines(served, expected)
    assert similarity.min() >= 0.9999, similarity
    return float(similarity.min()), first_answer_s


def test_models_follow_the_work_and_bulk_work_survives_a_host(
    fleet: Fleet, settings_env: SettingsEnv, s3_server: S3Server, db_engine: Engine
) -> None:
    figures: dict[str, float] = {}
    with httpx.Client(base_url=fleet.api.base_url, timeout=120) as client:
        for kind, path in (("lora", "/fine-tune-lora"), ("full", "/fine-tune")):
            alias = f"fleet-{kind}"
            train(client, path, alias)
            figures[f"{kind}_min_cos"], figures[f"{kind}_first_answer_s"] = assert_b_serves_what_a_trained(
                client, alias, fleet, settings_env
            )
        assert "Task train.lora" in fleet.host_a.log_text() and "Task train.lora" not in fleet.host_b.log_text()
        assert "Task inference.run" in fleet.host_b.log_text() and "Task inference.run" not in fleet.host_a.log_text()

        reembed_on_b(client, fleet)
        corrupt_artifact_is_a_clear_error(client, fleet, s3_server)
        figures.update(kill_host_a_mid_ingest(client, fleet, db_engine))
    print(f"\n[fleet] {json.dumps(figures)}")


def reembed_on_b(client: httpx.Client, fleet: Fleet) -> None:
    made = client.post("/collections", json={"name": "fleet-small", "model": BASE, "chunking": {"max_tokens": 32}})
    assert made.status_code == 201, made.text
    rows = [{"id": f"d{i}", "text": f"the {t} queue of document {i}"} for i, t in enumerate(TOPICS)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    ingest = client.post("/collections/fleet-small/documents", content=body, headers=NDJSON)
    assert wait_job(client, ingest.json()["id"], interval=0.3)["status"] == "succeeded"

    started = client.post("/collections/fleet-small/reembed", json={"model": "fleet-full"})
    assert started.status_code == 202, started.text
    job = wait_job(client, started.json()["id"], interval=0.3)
    assert job["status"] == "succeeded", job
    moved = client.get("/collections/fleet-small").json()
    assert (moved["model"], moved["counts"]["vectors"]) == ("fleet-full", len(TOPICS)), moved
    assert "ingest.reembed[" in fleet.host_b.log_text() and "ingest.reembed[" not in fleet.host_a.log_text()


def corrupt_artifact_is_a_clear_error(client: httpx.Client, fleet: Fleet, s3_server: S3Server) -> None:
    alias = "fleet-corrupt"
    folder = make_tiny_bert(fleet.models_api.parent / "made" / alias, seed=11)
    pushed = subprocess.run(
        [str(EMBEDQ), "models", "push", str(folder), "--name", alias],
        env={**os.environ, **fleet.env_a}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    with session_scope() as session:
        row = RegisteredModelRepository(session).registered(alias)
        assert row is not None and row.revision is not None
        revision = row.revision
    bucket_path = fleet.store_env["EMBEDQ_ARTIFACT_STORE"].removeprefix("s3://")
    weights = f"{bucket_path}/{artifacts.revision_prefix(alias, revision)}/files/model.safetensors"
    s3 = s3_server.client()
    data = bytearray(s3.cat_file(weights))
    data[len(data) // 3] ^= 0x01
    s3.pipe_file(weights, bytes(data))

    answer = client.post("/v1/embeddings", json={"input": TEXTS, "model": alias})
    assert answer.status_code == 500, answer.text
    message = answer.text
    assert alias in message and "does not match its manifest" in message and "publish it again" in message
    assert not (fleet.models_b / alias).exists()  # nothing half-loaded, nothing half-installed
    job = client.post("/jobs/embeddings", json={"input": TEXTS, "model": alias})
    assert job.status_code == 202, job.text
    finished = wait_job(client, job.json()["id"], interval=0.3)
    assert finished["status"] == "failed" and "does not match its manifest" in json.dumps(finished), finished


def in_flight(log: str) -> set[str]:
    """Return the ids of the ingest batches a worker's log shows received and not finished."""
    received = set(re.findall(r"Task ingest\.batch\[([0-9a-f-]+)\] received", log))
    return received - set(re.findall(r"Task ingest\.batch\[([0-9a-f-]+)\] (?:succeeded|failed|raised)", log))


def kill_host_a_mid_ingest(client: httpx.Client, fleet: Fleet, db_engine: Engine) -> dict[str, float]:
    """Both hosts on `bulk`; A is killed with SIGKILL while it holds batches; B finishes with every chunk once."""
    second_a = start_worker(fleet.env_a, queues=["bulk"])
    try:
        made = client.post("/collections", json={"name": "fleet-big", "model": BASE, "chunking": {"max_tokens": 16}})
        assert made.status_code == 201, made.text
        documents = 1000
        rows = [
            {"id": f"doc-{i}", "text": " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(40 + i % 30))}
            for i in range(documents)
        ]
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        started = time.monotonic()
        created = client.post("/collections/fleet-big/documents", content=body, headers=NDJSON)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        wait_until(
            lambda: in_flight(second_a.log_text()),
            120,
            lambda _: f"host A took no ingest batch\n{second_a.log_tail()}",
            interval=0.05,
        )
        second_a.kill()
        killed_at = time.monotonic()
        at_kill = client.get(f"/jobs/{job_id}").json()
        # Read again once it is dead: a batch that finished in the instant before the kill is not A's any more.
        held = in_flight(second_a.log_text())
        job = wait_job(client, job_id, interval=0.3, timeout=240)
        finished_after = time.monotonic() - killed_at
    finally:
        second_a.kill()
    assert job["status"] == "succeeded", job
    assert at_kill["status"] == "running" and at_kill["counts"]["done"] < documents, at_kill
    b_log = fleet.host_b.log_text()
    assert all(f"Task ingest.batch[{task}] received" in b_log for task in held), (held, fleet.host_b.log_tail())
    assert job["counts"] == {"total": documents, "done": documents, "failed": 0}, job
    with db_engine.connect() as conn:
        chunks, distinct, docs, gaps = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (c.document_id, c.idx)), count(DISTINCT c.document_id), "
                "count(*) FILTER (WHERE c.idx >= per.n) FROM chunks c JOIN documents d ON d.id = c.document_id "
                "JOIN collections col ON col.id = d.collection_id "
                "JOIN (SELECT document_id, count(*) AS n FROM chunks GROUP BY document_id) per "
                "ON per.document_id = c.document_id WHERE col.name = 'fleet-big'"
            )
        ).one()
    assert chunks == distinct and docs == documents and gaps == 0, (chunks, distinct, docs, gaps)
    assert chunks >= 2000, chunks
    vectors = client.get("/collections/fleet-big").json()["counts"]["vectors"]
    assert vectors == chunks, (vectors, chunks)
    return {
        "chunks": chunks,
        "done_at_kill": at_kill["counts"]["done"],
        "batches_held_by_a": len(held),
        "finished_after_kill_s": round(finished_after, 1),
        "ingest_s": round(time.monotonic() - started, 1),
    }
