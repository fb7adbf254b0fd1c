"""Run an ingest or reembed job's batches in this process, as the bulk queue's workers would."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.collections import ingestion
from app.collections.contracts import LoadModel
from app.collections.repository import CollectionRepository
from app.collections.settling import INDEXING
from app.core.config import Settings
from app.core.db import Scope
from app.models.job import Job, JobStatus
from workers.chunking import load_model


def drain(session: Session, scope: Scope, settings: Settings, job_id: uuid.UUID, load: LoadModel = load_model) -> Job:
    """Run every pending batch, then the index build, until the job leaves ``running``."""
    repo = CollectionRepository(session)
    for _ in range(20):
        job = session.get(Job, job_id)
        assert job is not None
        session.refresh(job)
        if job.status != JobStatus.RUNNING.value:
            return job
        seqs = repo.pending_batches(job_id)
        run = ingestion.run_reembed_batch if job.kind == "reembed" else ingestion.run_ingest_batch
        for seq in seqs:
            run(scope, job_id, seq, load, settings)
        if not seqs and job.message == INDEXING:
            ingestion.build_index(scope, job_id, int(job.params["version_id"]), settings)
    raise AssertionError("the job did not finish")
