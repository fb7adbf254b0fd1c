"""Structured logs: JSON lines that carry the job id (API and worker) and the task id (worker)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from support.processes import start_worker
from support.settings import SettingsEnv
from support.waiting import wait_job, wait_until

from app.core.config import Settings
from app.core.queues import Queue
from app.observability.logging import configure_logging, log_context
from workers.observability import job_id_of


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_records_carry_the_ids_in_context(restore_root_logging, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    log = logging.getLogger("embedq.test")
    with log_context(job_id="j-1", task_id="t-1", task_name="embed.batch"):
        log.info("inside %s", "a task")
    log.warning("outside")
    inside, outside = json_lines(capsys.readouterr().err)[-2:]
    assert inside["message"] == "inside a task" and inside["level"] == "INFO" and inside["logger"] == "embedq.test"
    assert (inside["job_id"], inside["task_id"], inside["task_name"]) == ("j-1", "t-1", "embed.batch")
    assert "job_id" not in outside and outside["message"] == "outside"


def test_text_records_show_the_ids_too(restore_root_logging, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="text"))
    with log_context(job_id="j-2", task_id="t-2"):
        logging.getLogger("embedq.test").info("hello")
    assert "[job=j-2 task=t-2] hello" in capsys.readouterr().err


def test_the_job_id_of_a_task_is_its_first_uuid_argument_or_job_id_keyword() -> None:
    job = "0b6e3c52-94c5-4d1e-9b8e-2f7d0b7a4c11"
    assert job_id_of([job, 0, 256], {}) == job
    assert job_id_of([], {"job_id": job}) == job
    assert job_id_of(["not-a-uuid"], {}) is None


def test_api_requests_about_a_job_log_its_id(
    clean_state, restore_root_logging, settings_env: SettingsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.main import create_app

    settings_env.set(EMBEDQ_LOG_FORMAT="json")
    client = TestClient(create_app())
    job = client.post("/jobs/embeddings", json={"input": ["a"]}).json()
    client.post(f"/jobs/{job['id']}/cancel")
    finished = [r for r in json_lines(capsys.readouterr().err) if "finished: cancelled" in r["message"]]
    assert finished and finished[0]["job_id"] == job["id"]


def test_a_worker_logs_json_with_job_and_task_ids(api, service_env, clean_state) -> None:
    worker = start_worker({**service_env, "EMBEDQ_LOG_FORMAT": "json"}, queues=[Queue.INFERENCE])
    try:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            # The session's worker, if running, competes for the queue: send jobs until ours has run one.
            for attempt in range(12):
                job_id = client.post("/jobs/embeddings", json={"input": [f"log probe {attempt}"]}).json()["id"]
                records = _wait_for_job_records(client, worker, job_id)
                if records:
                    break
        assert records, worker.log_tail()
        done = [r for r in records if "succeeded in" in r["message"] or "finished" in r["message"]]
        assert done and all(r["task_name"] == "embed.batch" and r["task_id"] for r in done)
    finally:
        worker.stop()


def _wait_for_job_records(client: httpx.Client, worker, job_id: str, timeout: float = 180) -> list[dict]:
    """Return ``worker``'s records of the job once its task has ended; none when another worker ran it."""
    wait_job(client, job_id, {"succeeded", "failed"}, timeout=timeout)

    def records() -> list[dict]:
        return [r for r in json_lines(worker.log_text()) if r.get("job_id") == job_id]

    if not records():
        return []
    # The task's last record (Celery's "succeeded in" or "raised") is written just after the job row commits.
    return wait_until(
        records,
        30,
        lambda seen: f"the task of job {job_id} logged no end: {seen}",
        until=lambda seen: any("succeeded in" in r["message"] or "raised" in r["message"] for r in seen),
    )
