"""The reaper on a real Postgres and Redis: which jobs count as lost, what it re-enqueues, when it gives up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.vectors import fake_encode

from app.core.celery import celery_client
from app.core.config import Settings, get_settings
from app.core.queues import Queue, TaskName
from app.jobs import service as jobs
from app.jobs.schemas import EmbeddingJobCreate
from app.maintenance.broker import job_ids_in_broker
from app.maintenance.kinds import KindRecovery
from app.maintenance.repository import MaintenanceRepository
from app.maintenance.service import reap
from app.models.job import Job, JobKind, JobStatus
from app.models.recovery import JobRecovery
from workers.broker_heartbeat import held_delivery_tags, restamp


@pytest.fixture
def settings(settings_env: SettingsEnv) -> Settings:
    settings_env.set(EMBEDQ_JOB_BATCH_SIZE="4", EMBEDQ_REAPER_MAX_REQUEUES="2")
    return get_settings()


def make_job(session: Session, settings: Settings, n: int = 10) -> Job:
    job, _ = jobs.create_embedding_job(
        session, EmbeddingJobCreate(input=[f"text {i}" for i in range(n)]), settings, ADMIN
    )
    session.flush()
    session.info.pop("embedq_outbox", None)  # as if sent, then lost
    return job


def backdate(session: Session, job_id: uuid.UUID, seconds: float) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=func.now() - timedelta(seconds=seconds)))
    session.expire_all()


def sent(session: Session) -> list[tuple[str, tuple]]:
    return [(t.name.value, t.args) for t in session.info.pop("embedq_outbox", [])]


def test_a_lost_embedding_job_gets_its_unfinished_batches_again(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=10)
    jobs.run_embedding_batch(scope, job.id, range(0, 4), fake_encode)
    sent(db_session)
    backdate(db_session, job.id, settings.reaper_grace_s + 1)

    report = reap(scope, settings, lambda names: set())

    assert report.requeued == {str(job.id): 2} and report.failed == {}
    assert sent(db_session) == [("embed.batch", (str(job.id), [4, 5, 6, 7])), ("embed.batch", (str(job.id), [8, 9]))]
    (recovery,) = MaintenanceRepository(db_session).recoveries(job.id)
    assert (
        recovery.action == "requeued"
        and recovery.tasks == 2
        and "none of its tasks queued or running" in (recovery.reason)
    )
    # The re-enqueued batches get a full grace period before they are judged again.
    assert reap(scope, settings, lambda names: set()).stalled == 0


def test_jobs_with_a_message_in_the_broker_or_recent_progress_are_left_alone(
    db_session: Session, settings, scope
) -> None:
    waiting = make_job(db_session, settings)
    backdate(db_session, waiting.id, settings.reaper_grace_s + 1)
    recent = make_job(db_session, settings)
    asked: list[frozenset[str]] = []

    def broker(names: frozenset[str]) -> set[str]:
        asked.append(names)
        return {str(waiting.id)}

    report = reap(scope, settings, broker)

    assert report.stalled == 1 and report.requeued == {} and report.failed == {}
    assert "embed.batch" in asked[0] and "train.lora" in asked[0] and "ingest.batch" in asked[0]
    assert sent(db_session) == []
    assert db_session.scalar(select(func.count()).select_from(JobRecovery)) == 0
    assert recent.status == JobStatus.QUEUED


def test_a_job_lost_again_and_again_is_failed_with_the_reason(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=6)
    for _ in range(settings.reaper_max_requeues):
        backdate(db_session, job.id, settings.reaper_grace_s + 1)
        assert reap(scope, settings, lambda names: set()).requeued == {str(job.id): 2}
    backdate(db_session, job.id, settings.reaper_grace_s + 1)

    report = reap(scope, settings, lambda names: set())

    assert list(report.failed) == [str(job.id)]
    db_session.refresh(job)
    assert job.status == "failed" and job.finished_at is not None and job.message == "failed by the reaper"
    assert "lost again" in job.error and "after 2 re-enqueues" in job.error and "submit it again" in job.error
    actions = [r.action for r in MaintenanceRepository(db_session).recoveries(job.id)]
    assert actions == ["requeued", "requeued", "failed"]


def test_a_kind_that_cannot_be_resumed_is_failed_not_left_running(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=4)
    jobs.run_embedding_batch(scope, job.id, range(0, 2), fake_encode)  # running now
    backdate(db_session, job.id, settings.reaper_grace_s + 1)
    unresumable = {JobKind.EMBEDDINGS.value: KindRecovery(frozenset({TaskName.EMBED_BATCH}), requeue=None)}

    report = reap(scope, settings, lambda names: set(), unresumable)

    assert list(report.failed) == [str(job.id)]
    db_session.refresh(job)
    assert job.status == "failed" and "cannot be resumed" in job.error


def test_a_training_job_stuck_running_is_requeued_to_resume_then_failed(db_session: Session, settings, scope) -> None:
    job = Job(kind=JobKind.FINE_TUNE_LORA.value, status=JobStatus.RUNNING.value, model="tiny", params={})
    db_session.add(job)
    db_session.flush()
    # Training jobs get their own, longer grace: a step or an evaluation may take minutes between reports.
    backdate(db_session, job.id, settings.reaper_grace_s + 1)
    assert reap(scope, settings, lambda names: set()).stalled == 0

    for _ in range(settings.reaper_max_requeues):
        backdate(db_session, job.id, settings.training_reaper_grace_s + 1)
        assert reap(scope, settings, lambda names: set()).requeued == {str(job.id): 1}
        assert sent(db_session) == [("train.lora", (str(job.id),))]
    backdate(db_session, job.id, settings.training_reaper_grace_s + 1)
    assert list(reap(scope, settings, lambda names: set()).failed) == [str(job.id)]
    db_session.refresh(job)
    assert job.status == "failed" and "lost again" in job.error


def test_only_one_reaper_runs_at_a_time(db_session: Session, db_engine: Engine, settings) -> None:
    assert MaintenanceRepository(db_session).try_lock()

    @contextmanager
    def other_scope() -> Iterator[Session]:
        with Session(db_engine) as session, session.begin():
            yield session

    assert reap(other_scope, settings, lambda names: set()).ran is False


def test_the_reaper_sees_messages_queued_and_unacked_in_redis(redis_client: redis.Redis, clean_state) -> None:
    queued, held, other = (str(uuid.uuid4()) for _ in range(3))
    client = celery_client()
    client.send_task(TaskName.EMBED_BATCH.value, args=[queued, 0, 4], queue=Queue.INFERENCE.value)
    client.send_task(TaskName.EMBED_BATCH.value, args=[held, 0, 4], queue=Queue.INFERENCE.value)
    client.send_task("some.other", args=[other], queue=Queue.INFERENCE.value)
    # A worker took `held`: kombu moved it from the queue's list into the unacked hash.
    with Connection(get_settings().redis_url) as conn:
        channel = conn.default_channel
        message = None
        while message is None or message.headers["argsrepr"].find(held) < 0:
            if message is not None:
                message.requeue()
            message = channel.basic_get(Queue.INFERENCE.value, no_ack=False)
        assert redis_client.hlen("unacked") == 1

        found = job_ids_in_broker(redis_client, tuple(Queue), frozenset({TaskName.EMBED_BATCH.value}))

        assert found == {queued, held}
        message.ack()


def test_heartbeat_restamps_held_messages_and_never_revives_acked_ones(redis_client: redis.Redis, clean_state) -> None:
    with Connection(get_settings().redis_url) as conn:
        queue = conn.SimpleQueue("heartbeat-test")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        qos = queue.channel.qos
        assert sorted(held_delivery_tags(qos)) == sorted([first.delivery_tag, second.delivery_tag])
        redis_client.zadd("unacked_index", {first.delivery_tag: 1.0, second.delivery_tag: 1.0})
        first.ack()

        assert restamp(qos) == 1
        scores = dict(redis_client.zrange("unacked_index", 0, -1, withscores=True))
        assert list(scores) == [second.delivery_tag.encode()]
        assert scores[second.delivery_tag.encode()] > time.time() - 60
        second.ack()
        queue.close()


def test_a_stalled_job_with_nothing_left_to_embed_is_finalized(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=4)
    jobs.run_embedding_batch(scope, job.id, range(0, 4), fake_encode)
    # As if the finishing transaction's status change had been lost: every vector stored, job still running.
    db_session.execute(update(Job).where(Job.id == job.id).values(status="running", finished_at=None))
    backdate(db_session, job.id, settings.reaper_grace_s + 1)

    assert reap(scope, settings, lambda names: set()).requeued == {str(job.id): 0}

    assert sent(db_session) == []
    db_session.refresh(job)
    assert (job.status, job.done, job.finished_at is not None) == ("succeeded", 4, True)
