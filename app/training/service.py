"""Fine-tuning jobs on the API side: accept pairs into a queued job, report its status, list the aliases.

A training job is a row in ``jobs`` (kind ``fine_tune`` or ``fine_tune_lora``), one in ``training_runs`` and
its pairs in ``training_pairs``. The worker's side, running it and registering the result, is ``runner``.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from app.catalog.access import JOB_API_ERRORS, check_model
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import resolve_model, same_model
from app.collections.repository import CollectionRepository
from app.collections.service import require_collection
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError, EmbedqError, InvalidRequestError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.jobs import lifecycle
from app.keys.service import admit_job
from app.models.job import Job, JobKind
from app.models.registered_model import RegisteredModel, RegisteredModelKind
from app.models.training import TrainingRun
from app.training import eval_history, loss_history, storage
from app.training.defaults import default_epochs, default_learning_rate
from app.training.pairs import Pair, PairFormat, eval_count, parse_pairs, planned_steps, split_pairs
from app.training.repository import TrainingRepository
from app.training.schemas import (
    EvalPoint,
    FineTuneRequest,
    HardNegatives,
    LoraFineTuneRequest,
    LossPoint,
    TrainingData,
    TrainStatus,
    TrainStatusValue,
)

TASK_FOR_KIND = {JobKind.FINE_TUNE.value: TaskName.TRAIN_FULL, JobKind.FINE_TUNE_LORA.value: TaskName.TRAIN_LORA}
_NOT_HYPERPARAMS = {"text_content", "model_name", "base_model", "overwrite", "hard_negatives"}
_CUDA_DRIVER = Path("/proc/driver/nvidia/version")


class QLoraUnavailableError(EmbedqError):
    code = "qlora_unavailable"


def qlora_unavailable_reason(settings: Settings) -> str | None:
    """Return why QLoRA cannot run on this deployment, or None if it can (a CUDA driver and bitsandbytes)."""
    missing = []
    if settings.device.strip().lower() in ("cpu", "mps") or not _CUDA_DRIVER.exists():
        missing.append("a CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package")
    return " and ".join(missing) if missing else None


def create_training_job(
    session: Session, payload: FineTuneRequest, text: str, fmt: PairFormat, settings: Settings, principal: Principal
) -> Job:
    """Return a new queued training job of the caller's tenant for ``payload`` and the pairs in ``text``.

    Raises what to fix; the alias it will register belongs to the caller's tenant.
    """
    lora = isinstance(payload, LoraFineTuneRequest)
    if lora and payload.use_qlora:
        missing = qlora_unavailable_reason(settings)
        if missing:
            raise QLoraUnavailableError(
                f"use_qlora needs a CUDA GPU and the bitsandbytes package; this deployment lacks {missing}. "
                "Send use_qlora=false to train a plain LoRA adapter, or run on a GPU host with "
                "`pip install bitsandbytes`",
                param="use_qlora",
            )
    repo = TrainingRepository(session)
    base = _check_base(repo, payload.base_model or settings.default_model, settings, principal)
    if not payload.dry_run:  # a dry run registers nothing, so it may name any alias
        _check_alias_free(repo, payload.model_name, base, payload.overwrite, lora, settings, principal)
    mining = _mining_params(session, payload.hard_negatives, base, principal, settings)
    parsed = parse_pairs(text, fmt)
    if len(parsed.pairs) > settings.training_max_pairs:
        raise InvalidRequestError(
            f"{len(parsed.pairs)} pairs; at most {settings.training_max_pairs} per job "
            "(EMBEDQ_TRAINING_MAX_PAIRS): sample them down",
            param="text_content",
        )
    share = settings.training_eval_share if payload.eval_share is None else payload.eval_share
    held_out = eval_count(len(parsed.pairs), share, settings.training_eval_min_pairs if share > 0 else 0)
    train, _ = split_pairs(parsed.pairs, held_out, payload.seed)
    # Distinct (query, positive) pairs: a file of one pair repeated trains on nothing (every loss 0).
    distinct = len({(p.query, p.positive) for p in train})
    if distinct < settings.training_min_pairs:
        repeats = f", {len(train) - distinct} of those left to train repeat another" if distinct < len(train) else ""
        raise InvalidRequestError(
            f"{len(parsed.pairs)} usable pairs ({held_out} of them held out for evaluation, {parsed.skipped} "
            f"lines skipped{repeats}); training needs at least {settings.training_min_pairs} distinct pairs after "
            "the hold-out. Send more `query<TAB>passage` lines",
            param="text_content",
            skipped_lines=parsed.skipped,
            skipped_examples=parsed.skipped_examples,
        )
    method = (RegisteredModelKind.LORA if lora else RegisteredModelKind.FULL).value
    steps_per_epoch = planned_steps(_as_mined(train, payload.hard_negatives), payload.batch_size)
    hyperparams = payload.model_dump(exclude=_NOT_HYPERPARAMS)
    chosen = [name for name in ("epochs", "learning_rate") if hyperparams[name] is None]
    if hyperparams["epochs"] is None:
        hyperparams["epochs"] = default_epochs(
            steps_per_epoch, settings.training_default_min_steps, settings.training_default_max_epochs
        )
    if hyperparams["learning_rate"] is None:
        hyperparams["learning_rate"] = default_learning_rate(method, len(train))
    if hyperparams["early_stopping_patience"] is None:
        hyperparams["early_stopping_patience"] = settings.training_early_stopping_patience
    hyperparams.update(eval_pairs=held_out, chosen_defaults=chosen)
    if mining is not None:
        hyperparams["hard_negatives"] = mining
    total_steps = 0 if payload.dry_run else steps_per_epoch * int(hyperparams["epochs"])
    for optional in ("max_seq_length", "progress_milestones", "mini_batch_size", "eval_every_steps"):
        if hyperparams.get(optional) is None:
            hyperparams.pop(optional)
    admit_job(session, principal, settings)
    job = lifecycle.create(
        session,
        principal,
        JobKind.FINE_TUNE_LORA if lora else JobKind.FINE_TUNE,
        model=base,
        params={"alias": payload.model_name, **hyperparams},
        total=total_steps,
        message=_queued_message(len(parsed.pairs), held_out, parsed.skipped, payload.dry_run),
    )
    run = TrainingRun(
        job_id=job.id,
        method=method,
        alias=payload.model_name,
        base_model=base,
        overwrite=payload.overwrite,
        hyperparams=hyperparams,
        pairs=len(parsed.pairs),
        with_negatives=sum(p.negative is not None for p in parsed.pairs),
        skipped_lines=parsed.skipped,
        skipped_examples=parsed.skipped_examples,
        total_steps=total_steps,
    )
    repo.add(run, parsed.pairs)
    enqueue(session, TASK_FOR_KIND[job.kind], str(job.id))
    return job


def _queued_message(pairs: int, held_out: int, skipped: int, dry_run: bool) -> str:
    skipped_note = f"; {skipped} malformed line(s) skipped" if skipped else ""
    dry_note = " (dry run: nothing is trained)" if dry_run else ""
    return f"queued{dry_note}: {pairs} pairs, {held_out} held out for evaluation{skipped_note}"


def _mining_params(
    session: Session, wanted: HardNegatives | None, base: str, principal: Principal, settings: Settings
) -> dict[str, object] | None:
    """Return what the worker needs to mine negatives (the collection's id, when mining from one), or None.

    A collection must be the caller's and hold vectors of the base model: the queries are embedded with the
    base and searched in the collection's index.
    """
    if wanted is None or not wanted.mine:
        return None
    params: dict[str, object] = {"mine": True, "per_pair": wanted.per_pair, "from": wanted.source}
    name = wanted.collection
    if name is None:
        return params
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal)
    version = repo.active_version(collection.id)
    if not same_model(version.model, base, settings):
        raise InvalidRequestError(
            f"collection {name!r} holds vectors of {version.model}, not of the base model {base}: mine from a "
            "collection embedded with the base model, or from the training passages",
            param="hard_negatives",
        )
    if version.dimension is None or not VectorStore(session).vectors_and_bytes(version.id)[0]:
        raise InvalidRequestError(
            f"collection {name!r} has no vectors yet: add documents first, or mine from the training passages",
            param="hard_negatives",
        )
    params["collection_id"] = collection.id
    return params


def _as_mined(train: list[Pair], wanted: HardNegatives | None) -> list[Pair]:
    """Return ``train`` as mining would at most make it (``per_pair`` triples per pair without a negative),
    to plan the steps before the worker mines."""
    if wanted is None or not wanted.mine:
        return train
    without = [p for p in train if p.negative is None]
    mined = [Pair(p.query, p.positive, f"mined {i}") for p in without for i in range(wanted.per_pair)]
    return [p for p in train if p.negative is not None] + mined


def _check_base(repo: TrainingRepository, base: str, settings: Settings, principal: Principal) -> str:
    check_model(base, settings, principal, JOB_API_ERRORS, repo.session)
    registered = RegisteredModelRepository(repo.session).registered(base)
    if registered is not None and registered.kind == RegisteredModelKind.LORA.value:
        raise InvalidRequestError(
            f"base_model {base!r} is a LoRA adapter over {registered.base!r}: fine-tune {registered.base!r} "
            "(or a full fine-tune) instead",
            param="base_model",
        )
    return base


def _check_alias_free(
    repo: TrainingRepository,
    alias: str,
    base: str,
    overwrite: bool,
    lora: bool,
    settings: Settings,
    principal: Principal,
) -> None:
    """Refuse (409) an alias that names another model, is registered (unless ``overwrite``) or is being trained.

    Aliases are one namespace (they are folder names); another tenant's alias is refused as taken, without
    saying whose it is or which job made it, and can never be overwritten. The check holds a lock on the alias
    until the request's transaction ends (its job then exists), so two requests for one alias at once cannot
    both pass it.
    """
    repo.session.execute(sql("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"embedq:alias:{alias}"})
    if alias == base:
        raise ConflictError(f"model_name {alias!r} is the base model's name: pick a new alias", param="model_name")
    taken = ConflictError(f"model_name {alias!r} is taken: pick another model_name", param="model_name")
    active = repo.active_job_for_alias(alias)
    if active is not None:
        if not principal.sees(active.tenant):
            raise taken
        raise ConflictError(
            f"training job {active.id} is already producing model {alias!r}: wait for it, cancel it, or pick "
            "another model_name",
            param="model_name",
        )
    registered = RegisteredModelRepository(repo.session).registered(alias)
    if registered is not None and not principal.sees(registered.tenant):
        raise taken
    if registered is not None and registered.tenant != principal.tenant:
        raise ConflictError(
            f"model {alias!r} belongs to tenant {registered.tenant!r}: even an admin key cannot replace another "
            "tenant's model; pick another model_name",
            param="model_name",
        )
    if registered is not None:
        if not overwrite:
            raise ConflictError(
                f"model {alias!r} already exists (registered by job {registered.created_by_job}): send "
                '"overwrite": true to replace it, or pick another model_name',
                param="model_name",
            )
        adapters = RegisteredModelRepository(repo.session).adapters_over(alias) if lora else []
        if adapters:  # embedq stacks no adapter over an adapter: theirs would stop loading
            raise ConflictError(
                f"LoRA adapter(s) {', '.join(map(repr, adapters))} were trained over {alias!r}: a LoRA adapter "
                "cannot replace it (adapters do not stack); overwrite it with a full fine-tune, or pick another "
                "model_name",
                param="model_name",
            )
        return
    assert settings.models_dir is not None
    if storage.alias_dir(settings.models_dir, alias).exists() or _resolves(alias, settings):
        raise ConflictError(
            f"model_name {alias!r} is the name of a model that fine-tuning did not create; overwrite cannot "
            "replace it: pick another model_name",
            param="model_name",
        )


def _resolves(name: str, settings: Settings) -> bool:
    try:
        resolve_model(name, settings)
    except (LookupError, ValueError):
        return False
    return True


def train_status(session: Session, job_id: uuid.UUID, principal: Principal) -> TrainStatus:
    """Return a training job in the migrated-from /train-status shape; 404 for unknown, non-training or
    another tenant's jobs."""
    found = TrainingRepository(session).get_training_job(job_id, principal)
    if found is None:
        raise NotFoundError(f"no training job with id {job_id}", param="job_id")
    job, run = found
    status = TrainStatusValue.of(job.status)
    held_out = int(run.hyperparams.get("eval_pairs", 0))
    return TrainStatus(
        status=status,
        progress=job.progress,
        message=job.message,
        error=job.error,
        steps=run.step,
        epoch=run.epoch,
        loss=run.loss,
        loss_history=[LossPoint.model_validate(p) for p in loss_history.history_of(job.params)],
        eval_history=[EvalPoint.model_validate(p) for p in eval_history.history_of(job.params)],
        best_step=eval_history.best_step_of(job.params),
        total_steps=run.total_steps,
        eta_seconds=run.eta_seconds if status is TrainStatusValue.RUNNING else None,
        seconds_per_step=run.seconds_per_step,
        eval=run.eval,
        model=run.alias if status is TrainStatusValue.COMPLETED and not run.hyperparams.get("dry_run") else None,
        data=TrainingData(
            pairs=run.pairs,
            with_negatives=run.with_negatives,
            train_pairs=run.pairs - held_out,
            eval_pairs=held_out,
            skipped_lines=run.skipped_lines,
            skipped_examples=run.skipped_examples,
        ),
    )


def list_registered_models(session: Session, principal: Principal) -> list[RegisteredModel]:
    """Return the aliases fine-tuning registered for the caller's tenant (every tenant's for an admin), by name."""
    return RegisteredModelRepository(session).list_registered(principal)


def requeue_training(session: Session, job: Job) -> int:
    """Re-enqueue a training job whose task was lost (for the reaper); it resumes from its last checkpoint."""
    enqueue(session, TASK_FOR_KIND[job.kind], str(job.id))
    return 1
