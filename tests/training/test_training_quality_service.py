"""Fine-tuning quality through the runner on real Postgres: the best step is registered, a dry run registers
nothing, and negatives are mined from a collection's chunks through its index."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from sentence_transformers import SentenceTransformer
from sqlalchemy.orm import Session
from support.ingestion import drain
from support.principals import ADMIN
from support.tiny_models import in_models_dir
from test_training_service import TSV, alias_dir, create, registered, request, state, work_dir

from app.collections import service as collections
from app.collections import upload_writer
from app.collections.schemas import ChunkingSpec, CollectionCreate
from app.collections.upload_items import UploadOptions
from app.collections.uploads import UploadReader
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.errors import InvalidRequestError
from app.training.pairs import parse_pairs, split_pairs
from app.training.runner import RunOutcome, run_training
from app.training.schemas import FineTuneRequest, HardNegatives, LoraFineTuneRequest
from app.training.service import create_training_job, train_status
from workers.training.evaluation import retrieval_metrics
from workers.training.trainer import train


def test_the_best_step_is_registered_not_the_last(settings: Settings, tiny_base: str) -> None:
    alias = f"best-{uuid.uuid4().hex[:6]}"
    # A learning rate far too high: the held-out MRR@10 falls after the first steps, so the last is not the best.
    job_id = create(settings, request(tiny_base, alias, learning_rate=0.5, epochs=3, eval_every_steps=1))
    try:
        assert run_training(session_scope, job_id, train, settings) is RunOutcome.COMPLETED
        job, run = state(job_id)
        with session_scope() as session:
            status = train_status(session, job_id, ADMIN)
        curve = {p.step: p.mrr_at_10 for p in status.eval_history}
        # The base at step 0, then every step after the warmup (10% of 15 steps: 2 steps at a rising rate).
        assert sorted(curve) == [0, *range(3, run.total_steps + 1)]
        selection = (run.eval or {})["selection"]
        best = selection["best_step"]
        assert best == status.best_step and 0 < best < selection["last_step"] == run.total_steps
        trained = {s: v for s, v in curve.items() if s > 0}
        assert curve[best] == max(trained.values()) and curve[run.total_steps] < curve[best]
        assert f"kept step {best}'s weights" in (job.message or "")
        # What was registered is the best step's model: its held-out MRR@10 is the curve's at that step.
        _, held_out = split_pairs(parse_pairs(TSV).pairs, int(run.hyperparams["eval_pairs"]), 42)
        served = SentenceTransformer(str(alias_dir(settings, alias)), device="cpu")
        assert retrieval_metrics(served, held_out)["mrr@10"] == pytest.approx(curve[best], abs=1e-5)
        assert run.eval["trained"]["mrr@10"] == pytest.approx(curve[best], abs=1e-5)
        assert run.eval["trained"]["queries"] == len(held_out) and "mrr@10" in run.eval["trained"]["ci95"]
    finally:
        shutil.rmtree(alias_dir(settings, alias), ignore_errors=True)


def test_early_stopping_ends_the_job_and_registers_its_best(settings: Settings, tiny_base: str) -> None:
    alias = f"early-{uuid.uuid4().hex[:6]}"
    body = request(tiny_base, alias, learning_rate=0.5, epochs=5, eval_every_steps=1, early_stopping_patience=2)
    job_id = create(settings, body)
    try:
        assert run_training(session_scope, job_id, train, settings) is RunOutcome.COMPLETED
        job, run = state(job_id)
        selection = (run.eval or {})["selection"]
        assert selection["stopped_early"] and selection["last_step"] == selection["best_step"] + 2
        assert selection["last_step"] < run.total_steps and job.progress == 100
        assert "stopped early" in (job.message or "") and registered(alias) is not None
    finally:
        shutil.rmtree(alias_dir(settings, alias), ignore_errors=True)


def test_defaults_are_chosen_from_the_data_when_not_given(settings: Settings, tiny_base: str) -> None:
    chosen = settings.model_copy(update={"training_default_min_steps": 12, "training_early_stopping_patience": 3})
    with session_scope() as session:
        job = create_training_job(
            session, LoraFineTuneRequest(model_name="d", base_model=tiny_base, batch_size=4), TSV, "auto", chosen, ADMIN
        )
        params = dict(job.params)
    # 20 training pairs in batches of 4: 5 steps an epoch, so 3 epochs reach 12 steps; LoRA's small-data rate.
    assert (params["epochs"], params["learning_rate"], params["early_stopping_patience"]) == (3, 5e-4, 3)
    assert params["chosen_defaults"] == ["epochs", "learning_rate"]


def make_collection(session: Session, scope, settings: Settings, name: str, model: str, texts: list[str]) -> None:
    spec = CollectionCreate(name=name, model=model, chunking=ChunkingSpec(max_tokens=64, overlap_tokens=0))
    collections.create_collection(session, spec, settings, ADMIN)
    body = "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)).encode()
    reader = UploadReader("application/x-ndjson", UploadOptions())
    writer = upload_writer.UploadWriter(session, name, settings, {"format": None}, ADMIN, None)
    writer.open()
    for item in reader.feed(body) + reader.close():
        if writer.add(item):
            writer.flush()
    job = writer.finish()
    done = drain(session, scope, settings, job.id)
    assert done.status == "succeeded", done.error


def test_a_dry_run_mines_from_a_collection_evaluates_the_base_and_registers_nothing(
    db_session: Session, scope, session_services
) -> None:
    # In the test's own transaction (rolled back at its end), so no clean_state: it would wait on that transaction.
    # The tiny random model finds every text alike (cosines near 0.9), so the filters are opened up here: the
    # test is about the path through the collection's index (the filters have tests of their own).
    loose = {"training_mining_relative_margin": 0.0, "training_mining_max_similarity_to_positive": 1.0}
    settings = get_settings().model_copy(update={"training_eval_min_pairs": 4, "ingest_batch_documents": 8, **loose})
    base = "tiny-mining-base"
    in_models_dir(base, seed=0)
    chunks = [f"a note on the {w} and the house" for w in ("cat", "dog", "river", "mountain", "city", "music")] * 2
    chunks = [f"{t} number {i}" for i, t in enumerate(chunks)]
    make_collection(db_session, scope, settings, "mine-docs", base, chunks)
    alias = f"dry-{uuid.uuid4().hex[:6]}"
    negatives = HardNegatives.model_validate({"mine": True, "per_pair": 2, "from": "collection:mine-docs"})
    body = FineTuneRequest(model_name=alias, base_model=base, batch_size=4, dry_run=True, hard_negatives=negatives)
    job = create_training_job(db_session, body, TSV, "auto", settings, ADMIN)
    assert job.total == 0 and "dry run" in (job.message or "")

    assert run_training(scope, job.id, train, settings) is RunOutcome.COMPLETED
    db_session.expire_all()
    status = train_status(db_session, job.id, ADMIN)
    assert status.status == "completed" and status.model is None and status.steps == 0
    assert status.message is not None and status.message.startswith("dry run: nothing trained or registered")
    mining = (status.eval or {})["mining"]
    assert mining["from"] == "collection:mine-docs" and mining["mined_pairs"] == status.data.train_pairs
    assert mining["negatives"] > 0 and mining["per_pair"] == 2, json.dumps(mining)
    assert {"recall@10", "mrr@10", "ci95", "queries"} <= set(status.eval["base"])
    assert registered(alias) is None and not alias_dir(settings, alias).exists()
    assert not work_dir(settings, job.id).exists()

    # The collection must hold vectors of the base model: its index is searched with the base's query vectors.
    other = FineTuneRequest(model_name="x", base_model=settings.default_model, hard_negatives=negatives)
    with pytest.raises(InvalidRequestError, match="not of the base model"):
        create_training_job(db_session, other, TSV, "auto", settings, ADMIN)
    # The same model under its other name is the base; a collection of it with no vectors yet mines nothing.
    spec = CollectionCreate(name="short-name", model="all-MiniLM-L6-v2")
    collections.create_collection(db_session, spec, settings, ADMIN)
    from_it = HardNegatives.model_validate({"mine": True, "from": "collection:short-name"})
    by_other_name = FineTuneRequest(
        model_name="y", base_model="sentence-transformers/all-MiniLM-L6-v2", hard_negatives=from_it
    )
    with pytest.raises(InvalidRequestError, match="has no vectors yet"):
        create_training_job(db_session, by_other_name, TSV, "auto", settings, ADMIN)
