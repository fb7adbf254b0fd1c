"""Faults: a worker's pool child, the whole worker, a training worker: killed with SIGKILL in the middle of a job.

Each test runs a real API and Celery worker against a Postgres and a Redis of its module's own, and checks
in Postgres at the end that the job succeeded: with exactly one vector per input, or for training, resumed
from the checkpoint it had saved.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import kombu.pools
import psutil
import pytest
from celery import Celery
from sqlalchemy import select
from support.faults import FaultStack, exactly_once, fault_stack, submit
from support.processes import ManagedProcess, start_api, start_worker
from support.texts import SENTENCES
from support.waiting import wait_until
from support.worker_metrics import scrape, total

from app.cli.embedded import find_free_port
from app.maintenance.broker import task_call
from app.models.job import Job, JobResult
from app.models.training import TrainingRun

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

INPUTS = 320  # 20 batches of 16
# The bound for picking up a killed worker's batches after a restart.
PICKUP_BOUND_S = 60.0


def short_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}. " + " ".join(rng.choices(SENTENCES, k=rng.randint(1, 4))) for i in range(n)]


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str]) -> Iterator[FaultStack]:
    with fault_stack(service_env) as fresh:
        yield fresh


@pytest.fixture(scope="module")
def fault_api(stack: FaultStack) -> Iterator[ManagedProcess]:
    process = start_api(stack.env)
    yield process
    process.stop()


@pytest.fixture
def clean(stack: FaultStack) -> FaultStack:
    stack.reset()
    return stack


def test_killed_pool_child_loses_and_duplicates_nothing(clean: FaultStack, fault_api: ManagedProcess) -> None:
    worker = start_worker(clean.env, queues=["inference"])
    try:
        job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=1))
        before = clean.wait_done_at_least(job_id, 64)
        in_flight = clean.held_batches()
        psutil.Process(worker.pid).children()[0].kill()
        redone_after = clean.wait_embedded(job_id, in_flight, timeout=300)
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
        assert worker.alive(), worker.log_tail()
        # Usually the child dies inside a batch (WorkerLostError); with batches of ~0.2 s it can die just as the
        # next one is handed over, which the new child then runs. Either way it was killed and nothing was lost.
        log = worker.log_text()
        assert "WorkerLostError" in log or "exited with 'signal 9 (SIGKILL)'" in log, worker.log_tail()
    finally:
        worker.stop()
    print(
        f"\n[fault] pool child killed at {before}/{INPUTS} holding {len(in_flight)} batches: "
        f"redone {redone_after:.1f}s later"
    )


def kill_while_holding(clean: FaultStack, job_id: str, at_least: int, tries: int = 3) -> tuple[int, list[list[int]]]:
    """SIGKILL a worker (parent and pool children at once) once ``at_least`` inputs are done and it holds a batch;
    return the done count and the batches it held.

    Between acking one batch and taking the next a worker holds none (on a fast CPU a good part of its time): a
    kill that lands there orphans nothing, and a new worker is started and killed a few batches later.
    """
    done, held = 0, []
    for _ in range(tries):
        worker = start_worker(clean.env, queues=["inference"])
        try:
            done = clean.wait_done_at_least(job_id, at_least)
            wait_until(clean.held_batches, 60, "the worker never held a batch", interval=0.01)
            worker.kill()
        finally:
            worker.stop()
        if held := clean.held_batches():
            break
        at_least = done + 32
    return done, held


def test_killed_worker_batches_are_picked_up_after_restart(clean: FaultStack, fault_api: ManagedProcess) -> None:
    job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=2))
    before, orphaned = kill_while_holding(clean, job_id, 64)
    assert orphaned, "the killed worker held no message: nothing to recover"
    assert clean.counts(job_id)["status"] == "running"

    restarted_at = time.monotonic()
    worker = start_worker(clean.env, queues=["inference"])
    try:
        # The killed worker's batches are restored to the front of the queue once unstamped for the
        # visibility timeout; "picked up" = embedded by the new worker.
        clean.wait_embedded(job_id, orphaned, timeout=PICKUP_BOUND_S + 120)
        picked_up_after = time.monotonic() - restarted_at
        assert picked_up_after < PICKUP_BOUND_S, (
            f"the killed worker's batches took {picked_up_after:.0f}s after the restart\n{worker.log_tail()}"
        )
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
        assert clean.held_batches() == []
    finally:
        worker.stop()
    print(
        f"\n[fault] worker killed at {before}/{INPUTS} holding {len(orphaned)} batches: "
        f"picked up and embedded {picked_up_after:.1f}s after the restart"
    )


def test_a_message_held_past_the_visibility_timeout_is_not_redelivered(clean: FaultStack) -> None:
    # A task waiting for its ETA is held (unacked) by its worker, like a long training run: past the
    # visibility timeout, only the worker's heartbeat keeps the message from going back to the queue.
    env = {
        **clean.env,
        "EMBEDQ_REDIS_VISIBILITY_TIMEOUT_S": "6",
        "EMBEDQ_BROKER_HEARTBEAT_S": "2",
        "EMBEDQ_BROKER_RESTORE_INTERVAL_S": "1",
    }
    worker = start_worker(env, queues=["inference"])
    control = Celery("embedq-tests", broker=clean.redis.url())
    try:
        task_id = control.send_task(
            "embed.batch", args=[str(uuid.uuid4()), 0, 16], queue="inference", countdown=20, ignore_result=True
        ).id
        wait_until(
            lambda: f"Task embed.batch[{task_id}] succeeded" in worker.log_text(),
            120,
            lambda _: worker.log_tail(),
            interval=0.5,
        )
        assert worker.log_text().count(f"Task embed.batch[{task_id}] received") == 1, worker.log_tail()
    finally:
        control.close()
        worker.stop()


SLEEPY = "support.sleepy_app:app"
HEARTBEAT_ENV = {
    "EMBEDQ_REDIS_VISIBILITY_TIMEOUT_S": "5",
    "EMBEDQ_BROKER_HEARTBEAT_S": "1",
    "EMBEDQ_BROKER_RESTORE_INTERVAL_S": "1",
}


def test_a_task_running_through_a_warm_shutdown_is_not_handed_to_another_worker(clean: FaultStack) -> None:
    # A scale-down's SIGTERM: the consumer stops at once, the pool drains what runs (an index build, a training
    # step and its checkpoint). The drain outlasts the visibility timeout four times over; only the worker's
    # heartbeat keeps the running task's message from going back to the queue, where B would take it.
    env = {**clean.env, **HEARTBEAT_ENV}
    stopping = start_worker(env, queues=["inference"], app=SLEEPY)
    other: ManagedProcess | None = None
    control = Celery("embedq-tests", broker=clean.redis.url())
    try:
        task_id = control.send_task("tests.sleep", args=[20], queue="inference", ignore_result=True).id
        wait_until(lambda: f"tests.sleep[{task_id}] received" in stopping.log_text(), 60, lambda _: stopping.log_tail())
        other = start_worker(env, queues=["inference"], app=SLEEPY)
        stopping.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: not stopping.alive(), 60, lambda _: stopping.log_tail())
        assert f"Task tests.sleep[{task_id}] succeeded" in stopping.log_text(), stopping.log_tail()
        time.sleep(3)  # a restored message would reach the other worker within a sweep or two
        assert f"tests.sleep[{task_id}] received" not in other.log_text(), other.log_tail()
    finally:
        control.close()
        stopping.stop()
        if other is not None:
            other.stop()


def test_a_task_running_when_the_broker_connection_drops_runs_once_more_not_twice(clean: FaultStack) -> None:
    # A Redis failover or a network blip: the consumer's channel closes and kombu puts back every message it
    # held, the running task's too. The worker stops that task (Celery's
    # worker_cancel_long_running_tasks_on_connection_loss) so only the redelivered copy completes.
    env = {**clean.env, **HEARTBEAT_ENV}
    worker = start_worker(env, queues=["inference"], app=SLEEPY, concurrency=2)
    control = Celery("embedq-tests", broker=clean.redis.url())
    try:
        task_id = control.send_task("tests.sleep", args=[12], queue="inference", ignore_result=True).id
        received = f"Task tests.sleep[{task_id}] received"
        wait_until(lambda: received in worker.log_text(), 60, lambda _: worker.log_tail())
        time.sleep(1)
        clean.redis_client().client_kill_filter(_type="normal")  # every client's connection, the worker's too
        kombu.pools.reset()  # this process's pooled connections were among them: the next test starts afresh
        succeeded = f"Task tests.sleep[{task_id}] succeeded"
        wait_until(lambda: succeeded in worker.log_text(), 90, lambda _: worker.log_tail())
        time.sleep(14)  # a copy left running would finish within its 12 s
        log = worker.log_text()
        assert log.count(received) == 2 and log.count(succeeded) == 1, worker.log_tail()
    finally:
        control.close()
        worker.stop()


TOPICS = "cat dog river mountain city music book water bread train ship garden".split()
PAIRS_TSV = "\n".join(
    f"tell me about the {t} number {i}\titem {i} is about a {t} and nothing else" for i, t in enumerate(TOPICS * 4)
)


def checkpoint_step(stack: FaultStack, job_id: str) -> int | None:
    with stack.engine.connect() as conn:
        return conn.execute(
            select(TrainingRun.checkpoint_step).where(TrainingRun.job_id == uuid.UUID(job_id))
        ).scalar_one_or_none()


def test_training_worker_killed_mid_epoch_resumes_from_its_checkpoint(
    clean: FaultStack, fault_api: ManagedProcess
) -> None:
    env = {**clean.env, "EMBEDQ_TRAINING_PROGRESS_EVERY_STEPS": "1", "EMBEDQ_TRAINING_CHECKPOINT_EVERY_STEPS": "2"}
    worker = start_worker(env, queues=["training"])
    try:
        body = {"text_content": PAIRS_TSV, "model_name": f"faults-{uuid.uuid4().hex[:6]}", "batch_size": 2}
        created = httpx.post(f"{fault_api.base_url}/fine-tune-lora", json=body, timeout=60)
        assert created.status_code in (200, 202), created.text
        job_id = str(created.json()["job_id"])
        saved = wait_until(
            lambda: checkpoint_step(clean, job_id),
            600,
            lambda _: f"no checkpoint in 600s\n{worker.log_tail()}",
            until=lambda step: step is not None,
            interval=0.5,
        )
        worker.kill()
    finally:
        worker.stop()
    assert clean.counts(job_id)["status"] == "running"

    restarted_at = time.monotonic()
    worker = start_worker(env, queues=["training"])
    try:
        counts = clean.wait_terminal(job_id, timeout=900)
        finished_after = time.monotonic() - restarted_at
        assert counts["status"] == "succeeded", (counts, worker.log_tail())
        with clean.engine.connect() as conn:
            resumed = conn.execute(
                select(TrainingRun.resumed_from_step).where(TrainingRun.job_id == uuid.UUID(job_id))
            ).scalar_one()
        assert resumed is not None and resumed >= saved, (resumed, saved)
    finally:
        worker.stop()
    print(
        f"\n[fault] training worker killed after its step-{saved} checkpoint: resumed from step {resumed}, "
        f"succeeded {finished_after:.1f}s after the restart"
    )


def test_a_task_that_kills_its_worker_at_every_start_fails_its_job_after_the_limit(
    clean: FaultStack, fault_api: ManagedProcess
) -> None:
    metrics_port = find_free_port()
    env = {**clean.env, "EMBEDQ_TASK_MAX_STARTS": "2", "EMBEDQ_WORKER_METRICS_PORT": str(metrics_port)}
    worker = start_worker(env, queues=["training"])
    redis_client = clean.redis_client()
    try:
        body = {"text_content": PAIRS_TSV, "model_name": f"poison-{uuid.uuid4().hex[:6]}", "batch_size": 2}
        created = httpx.post(f"{fault_api.base_url}/fine-tune-lora", json=body, timeout=60)
        assert created.status_code in (200, 202), created.text
        job_id = str(created.json()["job_id"])
        for start in (1, 2):  # as the kernel's OOM killer would: the pool child dies inside the task, twice
            wait_until(
                lambda: [int(v) for v in redis_client.mget(redis_client.keys("embedq:task-starts:*") or ["-"]) if v],
                120, lambda seen, s=start: f"start {s} never came ({seen})\n{worker.log_tail()}",
                until=lambda seen, s=start: seen == [s], interval=0.1,
            )  # fmt: skip
            time.sleep(0.5)
            psutil.Process(worker.pid).children()[0].kill()
        counts = clean.wait_terminal(job_id, timeout=120)
        assert counts["status"] == "failed", (counts, worker.log_tail())
        with clean.engine.connect() as conn:
            error = conn.execute(select(Job.error).where(Job.id == uuid.UUID(job_id))).scalar_one()
        assert "was started 2 times and its worker died each time" in error and "EMBEDQ_TASK_MAX_STARTS" in error
        wait_until(lambda: redis_client.keys("embedq:task-starts:*"), 10, "the give-up left its count",
                   until=lambda keys: not keys)  # fmt: skip
        assert worker.alive(), worker.log_tail()
        log = worker.log_text()
        assert log.count("WorkerLostError") + log.count("signal 9 (SIGKILL)") >= 2, worker.log_tail()
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert total(metrics, "embedq_worker_tasks_given_up_total", task="train.lora") == 1
    finally:
        worker.stop()


def queued_calls(stack: FaultStack, queue: str) -> dict[str, tuple[str, list]]:
    """Return {task id: (task name, args)} of the messages waiting in ``queue`` (every priority level of it)."""
    client = stack.redis_client()
    calls = {}
    for key in client.scan_iter(f"{queue}*"):
        if client.type(key) == b"list":
            for raw in client.lrange(key, 0, -1):
                message = json.loads(raw)
                call = task_call(message)
                if call is not None:
                    calls[message["headers"]["id"]] = call
    return calls


def test_a_batch_given_up_fails_only_its_own_inputs_and_the_job_embeds_the_rest(
    clean: FaultStack, fault_api: ManagedProcess
) -> None:
    texts = short_texts(64, seed=3)
    job_id = submit(fault_api.base_url, texts)  # no worker yet: its batches wait in the queue
    batches = {i: args for i, (name, args) in queued_calls(clean, "inference").items() if name == "embed.batch"}
    assert len(batches) >= 2, batches
    poisoned, args = sorted(batches.items())[0]
    poisoned_inputs = sorted(args[1])
    # What two starts that each killed their worker leave behind: a count no end of the task ever cleared.
    clean.redis_client().set(f"embedq:task-starts:{poisoned}", 2)
    worker = start_worker({**clean.env, "EMBEDQ_TASK_MAX_STARTS": "2"}, queues=["inference"])
    try:
        counts = clean.wait_terminal(job_id)
    finally:
        worker.stop()
    assert counts["failed"] == counts["errors"] == len(poisoned_inputs), counts
    assert counts["vectors"] == len(texts) - len(poisoned_inputs), counts
    with clean.engine.connect() as conn:
        failed = conn.execute(
            select(JobResult.idx, JobResult.error).where(
                JobResult.job_id == uuid.UUID(job_id), JobResult.error.is_not(None)
            )
        ).all()
    assert sorted(idx for idx, _ in failed) == poisoned_inputs
    assert all("was started 2 times and its worker died each time" in error for _, error in failed), failed[0]
    assert not clean.redis_client().keys("embedq:task-starts:*")
