"""Jobs of one collection finishing while another job's index build commits, on two real connections.

An upload whose documents another job already embedded has nothing left to do: its last batch settles it
at once. If that happens while the other job's build marks the index ready (``ingestion.build_index``), the
batch must see the build's outcome: it once read "building" before the build committed and wrote it back
after, and the job whose build had just finished then waited for one that never came.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.tiny_models import in_models_dir
from support.waiting import wait_until

from app.collections import ingestion, service, upload_writer
from app.collections.repository import CollectionRepository
from app.collections.schemas import ChunkingSpec, CollectionCreate
from app.collections.settling import INDEXING
from app.collections.upload_items import UploadOptions
from app.collections.uploads import UploadReader
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.models.collection import IndexStatus
from app.models.job import Job
from workers.chunking import load_model

MODEL = "tiny-index-race"
DOCUMENTS = b'{"id": "a", "text": "the first document"}\n{"id": "b", "text": "the second one"}\n'


@pytest.fixture
def settings(settings_env: SettingsEnv, session_services) -> Settings:
    in_models_dir(MODEL, seed=3)
    settings_env.set(EMBEDQ_INGEST_BATCH_DOCUMENTS="8")
    return get_settings()


def upload(settings: Settings) -> Job:
    with session_scope() as session:
        writer = upload_writer.UploadWriter(session, "race", settings, {"format": None}, ADMIN, None)
        writer.open()
        for item in UploadReader("application/x-ndjson", UploadOptions()).feed(DOCUMENTS):
            writer.add(item)
        job = writer.finish()
        session.expunge(job)
        return job


def run_batches(job: Job, settings: Settings) -> None:
    with session_scope() as session:
        seqs = CollectionRepository(session).pending_batches(job.id)
    for seq in seqs:
        ingestion.run_ingest_batch(session_scope, job.id, seq, load_model, settings)


def test_a_job_settling_during_another_jobs_index_build_sees_the_built_index(
    clean_state, db_engine, settings: Settings
) -> None:
    with session_scope() as session:
        payload = CollectionCreate(name="race", model=MODEL, chunking=ChunkingSpec(max_tokens=16, overlap_tokens=4))
        service.create_collection(session, payload, settings, ADMIN)
    first, second = upload(settings), upload(settings)  # the same documents twice, both pending
    run_batches(first, settings)  # embeds them; the first job now waits for its index build
    with Session(db_engine) as session:
        assert session.get(Job, first.id).message == INDEXING
        version_id = int(first.params["version_id"])

    # The first job's build, between building and committing: the version's row locked, marked ready.
    build = Session(db_engine)
    repo = CollectionRepository(build)
    repo.version(version_id, lock=True)
    repo.set_index_status(version_id, IndexStatus.READY)
    settling = threading.Thread(target=run_batches, args=(second, settings))
    settling.start()
    with db_engine.connect() as conn:  # the second job's batch waits on the build's lock
        wait_until(
            lambda: conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one(),
            30,
            "the second job's batch never waited for the index build",
        )
    build.commit()
    build.close()
    settling.join(timeout=60)
    assert not settling.is_alive()

    with Session(db_engine) as session:
        assert CollectionRepository(session).version(version_id).index_status == IndexStatus.READY.value
        job = session.get(Job, second.id)
        assert (job.status, job.done, job.skipped) == ("succeeded", 2, 0), (job.status, job.message)
