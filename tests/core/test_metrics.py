"""Prometheus metrics: the API's /metrics in-process, and a real worker's metrics port while jobs run."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from support.processes import start_worker
from support.settings import SettingsEnv
from support.waiting import wait_job
from support.worker_metrics import samples, total, value

from app.cli.embedded import find_free_port
from app.core.queues import Queue
from app.main import create_app


def test_api_metrics_move_when_a_job_is_queued_and_cancelled(clean_state) -> None:
    client = TestClient(create_app())
    before = samples(client.get("/metrics").text)
    assert value(before, "embedq_jobs", kind="embeddings", status="queued") == 0
    assert {q.value for q in Queue} <= {dict(ls)["queue"] for n, ls in before if n == "embedq_queue_depth"}
    assert value(before, "embedq_scrape_source_up", source="postgres") == 1
    assert value(before, "embedq_scrape_source_up", source="redis") == 1

    job = client.post("/jobs/embeddings", json={"input": ["a", "b"]}).json()
    after_post = samples(client.get("/metrics").text)
    assert value(after_post, "embedq_jobs", kind="embeddings", status="queued") == 1
    assert value(after_post, "embedq_queue_depth", queue="inference") == 1
    assert value(after_post, "embedq_http_requests_total", method="POST", route="/jobs/embeddings", status="202") == 1
    assert value(after_post, "embedq_http_request_duration_seconds_count", method="POST", route="/jobs/embeddings") == 1

    client.post(f"/jobs/{job['id']}/cancel")
    client.get(f"/jobs/{job['id']}")
    after_cancel = samples(client.get("/metrics").text)
    assert value(after_cancel, "embedq_jobs", kind="embeddings", status="cancelled") == 1
    assert value(after_cancel, "embedq_jobs", kind="embeddings", status="queued") == 0
    # Routes are labelled by template, so one series serves every job id.
    assert value(after_cancel, "embedq_http_requests_total", method="GET", route="/jobs/{job_id}", status="200") == 1
    assert client.get("/no/such/page").status_code == 404
    assert (
        value(
            samples(client.get("/metrics").text),
            "embedq_http_requests_total",
            method="GET",
            route="unmatched",
            status="404",
        )
        == 1
    )


def test_metrics_report_an_unreachable_redis_instead_of_failing(clean_state, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_REDIS_URL="redis://127.0.0.1:1/0")
    r = TestClient(create_app()).get("/metrics")
    assert r.status_code == 200
    metrics = samples(r.text)
    assert value(metrics, "embedq_scrape_source_up", source="redis") == 0
    assert value(metrics, "embedq_scrape_source_up", source="postgres") == 1


def test_worker_metrics_move_when_a_job_runs(api, service_env, clean_state) -> None:
    port = find_free_port()
    worker = start_worker({**service_env, "EMBEDQ_WORKER_METRICS_PORT": str(port)}, queues=[Queue.INFERENCE])
    try:
        worker_url = f"http://127.0.0.1:{port}/metrics"
        assert total(samples(httpx.get(worker_url).text), "embedq_worker_batch_inputs_count") == 0
        api_before = samples(httpx.get(f"{api.base_url}/metrics").text)
        # The session's worker, if running, competes for the same queue: send jobs until ours has run one.
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            for attempt in range(12):
                job = client.post("/jobs/embeddings", json={"input": [f"metrics probe {attempt}", "a second text"]})
                wait_job(client, job.json()["id"], timeout=180)
                metrics = samples(httpx.get(worker_url).text)
                if total(metrics, "embedq_worker_batch_inputs_count"):
                    break
        model = "sentence-transformers/all-MiniLM-L6-v2"
        assert value(metrics, "embedq_worker_batch_inputs_sum", model=model) >= 2, worker.log_tail(80)
        assert value(metrics, "embedq_worker_tokens_total", model=model) > 2
        assert value(metrics, "embedq_worker_encode_seconds_total", model=model) > 0
        assert total(metrics, "embedq_worker_tokens_per_second", model=model) > 0
        assert value(metrics, "embedq_worker_model_load_seconds_count", model=model) == 1
        assert value(metrics, "embedq_worker_model_load_seconds_sum", model=model) > 0
        assert value(metrics, "embedq_worker_resident_models", model=model) == 1
        assert total(metrics, "embedq_worker_tasks_total", task="embed.batch", state="SUCCESS") >= 1
        api_after = samples(httpx.get(f"{api.base_url}/metrics").text)
        assert value(api_after, "embedq_jobs", kind="embeddings", status="succeeded") > value(
            api_before, "embedq_jobs", kind="embeddings", status="succeeded"
        )
    finally:
        worker.stop()
