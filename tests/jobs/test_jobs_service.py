"""The jobs service on a real Postgres: batching, idempotent redelivery, finalization, cancel, failures."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.vectors import fake_encode, fake_vectors

from app.core.config import Settings, get_settings
from app.core.errors import ConflictError, InvalidRequestError
from app.jobs import service
from app.jobs.schemas import EmbeddingJobCreate, EncodingFormat
from app.models.job import Job, JobResult, JobStatus


def failing_encoder(model: str, texts: list[str]) -> np.ndarray:
    raise RuntimeError("CUDA out of memory (simulated)")


@pytest.fixture
def settings(settings_env: SettingsEnv) -> Settings:
    settings_env.set(EMBEDQ_JOB_BATCH_SIZE="4", EMBEDQ_MAX_INPUTS_PER_JOB="20")
    return get_settings()


def make_job(session: Session, settings, n: int = 10, **kw) -> Job:
    payload = EmbeddingJobCreate(input=[f"text number {i}" for i in range(n)], **kw)
    job, created = service.create_embedding_job(session, payload, settings, ADMIN)
    assert created
    session.flush()
    return job


def outbox(session: Session) -> list:
    return session.info.get("embedq_outbox", [])


def test_job_is_split_into_batches_sent_after_commit(db_session: Session, settings) -> None:
    job = make_job(db_session, settings, n=10)
    sent = [(t.name.value, t.args) for t in outbox(db_session)]
    assert sent == [
        ("embed.batch", (str(job.id), [0, 1, 2, 3])),
        ("embed.batch", (str(job.id), [4, 5, 6, 7])),
        ("embed.batch", (str(job.id), [8, 9])),
    ]
    assert db_session.scalar(select(func.count()).where(JobResult.job_id == job.id)) == 10
    assert job.status == JobStatus.QUEUED


def test_batches_group_inputs_of_about_one_length_and_results_keep_input_order(
    db_session: Session, settings, scope
) -> None:
    texts = ["x" * n for n in (3, 40, 5, 38, 1, 42, 4, 39, 2)]
    job, _ = service.create_embedding_job(db_session, EmbeddingJobCreate(input=texts), settings, ADMIN)
    batches = [t.args[1] for t in outbox(db_session)]
    assert batches == [[1, 3, 5, 7], [0, 2, 6, 8], [4]]
    db_session.flush()
    for idxs in batches:
        service.run_embedding_batch(scope, job.id, idxs, fake_encode)
    page = service.job_results(db_session, job.id, ADMIN, offset=0, limit=100, encoding_format=EncodingFormat.FLOAT)
    assert [item.index for item in page.data] == list(range(len(texts)))
    got = np.asarray([item.embedding for item in page.data], dtype=np.float32)
    np.testing.assert_array_equal(got, fake_vectors("", texts))


def test_batches_complete_the_job_once_and_redelivery_changes_nothing(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=10)
    outcomes = [service.run_embedding_batch(scope, job.id, range(a, b), fake_encode) for a, b in [(8, 10), (0, 4)]]
    assert [o.written for o in outcomes] == [2, 4]
    assert all(o.finished_status is None for o in outcomes)

    last = service.run_embedding_batch(scope, job.id, range(4, 8), fake_encode)
    assert last.written == 4 and last.finished_status is JobStatus.SUCCEEDED

    again = service.run_embedding_batch(scope, job.id, range(0, 4), fake_encode)
    assert again.written == 0 and again.finished_status is None
    db_session.refresh(job)
    assert (job.status, job.done, job.failed, job.progress) == ("succeeded", 10, 0, 100.0)
    assert job.started_at is not None and job.finished_at is not None

    page = service.job_results(db_session, job.id, ADMIN, offset=0, limit=100, encoding_format=EncodingFormat.FLOAT)
    got = np.asarray([item.embedding for item in page.data], dtype=np.float32)
    want = fake_vectors("", [f"text number {i}" for i in range(10)])
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert [item.index for item in page.data] == list(range(10))


def test_results_page_in_base64_is_little_endian_float32(db_session: Session, settings, scope) -> None:
    import base64

    job = make_job(db_session, settings, n=6)
    for a, b in [(0, 4), (4, 6)]:
        service.run_embedding_batch(scope, job.id, range(a, b), fake_encode)
    page = service.job_results(db_session, job.id, ADMIN, offset=2, limit=3, encoding_format=EncodingFormat.BASE64)
    assert [i.index for i in page.data] == [2, 3, 4] and page.next_offset == 5
    decoded = np.frombuffer(base64.b64decode(page.data[0].embedding), dtype="<f4")
    np.testing.assert_array_equal(decoded, fake_vectors("", ["text number 2"])[0])


def test_encoder_failure_fails_inputs_and_then_the_job(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=6)
    service.run_embedding_batch(scope, job.id, range(0, 4), fake_encode)
    outcome = service.run_embedding_batch(scope, job.id, range(4, 6), failing_encoder)
    assert outcome.failed == 2 and outcome.finished_status is JobStatus.FAILED
    db_session.refresh(job)
    assert (job.done, job.failed, job.status) == (4, 2, "failed")
    assert "2 of 6 inputs failed" in job.error and "out of memory" in job.error


def test_cancelled_job_runs_no_more_batches(db_session: Session, settings, scope) -> None:
    job = make_job(db_session, settings, n=10)
    service.run_embedding_batch(scope, job.id, range(0, 4), fake_encode)
    assert service.cancel_job(db_session, job.id, ADMIN).status == "cancelled"
    outcome = service.run_embedding_batch(scope, job.id, range(4, 8), fake_encode)
    assert outcome.written == 0
    db_session.refresh(job)
    assert (job.status, job.done) == ("cancelled", 4)

    finished = make_job(db_session, settings, n=4)
    service.run_embedding_batch(scope, finished.id, range(0, 4), fake_encode)
    with pytest.raises(ConflictError, match="already ended with status succeeded"):
        service.cancel_job(db_session, finished.id, ADMIN)


def test_idempotency_key_returns_the_first_job_and_refuses_another_payload(db_session: Session, settings) -> None:
    first = make_job(db_session, settings, n=3, idempotency_key="k-1")
    again, created = service.create_embedding_job(
        db_session,
        EmbeddingJobCreate(input=[f"text number {i}" for i in range(3)], idempotency_key="k-1"),
        settings,
        ADMIN,
    )
    assert (again.id, created) == (first.id, False)
    with pytest.raises(ConflictError, match="different request"):
        service.create_embedding_job(
            db_session, EmbeddingJobCreate(input=["something else"], idempotency_key="k-1"), settings, ADMIN
        )


def test_limits_and_unknown_models_are_refused_with_what_to_do(db_session: Session, settings) -> None:
    with pytest.raises(InvalidRequestError, match=r"at most 20 per job \(EMBEDQ_MAX_INPUTS_PER_JOB\)"):
        service.create_embedding_job(db_session, EmbeddingJobCreate(input=["x"] * 21), settings, ADMIN)
    with pytest.raises(InvalidRequestError, match="sentence-transformers/all-MiniLM-L6-v2") as err:
        service.create_embedding_job(
            db_session, EmbeddingJobCreate(input=["x"], model="no-such/model"), settings, ADMIN
        )
    assert err.value.param == "model"
    with pytest.raises(InvalidRequestError):
        service.create_embedding_job(db_session, EmbeddingJobCreate(input=["x"], model="../../etc"), settings, ADMIN)


def test_list_jobs_filters_and_paginates(db_session: Session, settings) -> None:
    ids = [make_job(db_session, settings, n=1).id for _ in range(3)]
    service.cancel_job(db_session, ids[0], ADMIN)
    page, next_offset = service.list_jobs(db_session, ADMIN, status=JobStatus.QUEUED, kind=None, limit=1, offset=0)
    assert len(page) == 1 and page[0].id in ids[1:] and next_offset == 1
    page2, end = service.list_jobs(db_session, ADMIN, status=JobStatus.QUEUED, kind=None, limit=1, offset=1)
    assert page2[0].id in ids[1:] and page2[0].id != page[0].id and end is None
    cancelled, _ = service.list_jobs(db_session, ADMIN, status=JobStatus.CANCELLED, kind=None, limit=10, offset=0)
    assert [j.id for j in cancelled] == [ids[0]]


def test_unknown_job_is_not_found(db_session: Session) -> None:
    from app.core.errors import NotFoundError

    with pytest.raises(NotFoundError):
        service.get_job(db_session, uuid.uuid4(), ADMIN)


def test_vectors_go_in_by_binary_copy_bit_for_bit_and_only_into_their_own_rows(db_session: Session, settings) -> None:
    from app.jobs.repository import JobRepository

    job = make_job(db_session, settings, n=6)
    repo = JobRepository(db_session)
    edge = np.array([[1e-38, -0.0, 3.4e38, -1.1754944e-38], [0.1, -0.2, 1 / 3, 7.0]], dtype=np.float32)
    # Two writes in one transaction: the second must not see the first's staged rows again.
    assert repo.write_embeddings(job.id, [1, 4], edge) == 2
    assert repo.write_embeddings(job.id, [2], edge[1:] * 2) == 1
    assert repo.write_embeddings(job.id, [1, 4], edge[::-1].copy()) == 0, "written inputs keep their first vector"

    stored = {r.idx: r.embedding for r in repo.results_page(job.id, offset=0, limit=10)}
    assert stored[0] is None and stored[3] is None and stored[5] is None
    np.testing.assert_array_equal(np.asarray(stored[1], dtype=np.float32).view(np.uint32), edge[0].view(np.uint32))
    np.testing.assert_array_equal(np.asarray(stored[4], dtype=np.float32), edge[1])
    np.testing.assert_array_equal(np.asarray(stored[2], dtype=np.float32), edge[1] * 2)
