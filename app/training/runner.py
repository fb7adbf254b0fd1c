"""The worker's side of fine-tuning: run a training job through the trainer and register the result.

The worker's task calls ``run_training`` with the trainer; everything the trainer reports comes back
through hooks that write to Postgres in short transactions of their own.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts, model_cache
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import resolve_model
from app.collections.repository import CollectionRepository
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import Scope
from app.core.outages import TRANSIENT_ERRORS
from app.core.redaction import without_server_paths
from app.core.store_outages import raise_if_unavailable, unavailable
from app.jobs import lifecycle
from app.jobs.repository import JobRepository
from app.models.job import Job, JobStatus
from app.models.registered_model import RegisteredModel
from app.models.training import TrainingRun
from app.training import eval_history, loss_history, storage
from app.training.lease import training_lease
from app.training.pairs import split_pairs
from app.training.repository import TrainingRepository
from app.training.spec import Progress, StopReason, TrainFn, TrainingQuality, TrainingResult, TrainingSpec

log = logging.getLogger(__name__)


class RunOutcome(StrEnum):
    """What one delivery of a training task did."""

    SKIPPED = "skipped"  # the job was no longer queued or running
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a worker shutdown: the task is to be redelivered and resume


class _DbHooks:
    """The trainer's hooks: each report is its own short transaction; a stop is read between steps."""

    def __init__(
        self, scope: Scope, job_id: uuid.UUID, shutdown_requested: Callable[[], bool], settings: Settings
    ) -> None:
        self.scope = scope
        self.job_id = job_id
        self.shutdown_requested = shutdown_requested
        self.settings = settings

    def started(self, total_steps: int, resumed_from_step: int | None) -> None:
        with self.scope() as session:
            TrainingRepository(session).update_run(
                self.job_id, total_steps=total_steps, resumed_from_step=resumed_from_step
            )
            note = f" (resumed from step {resumed_from_step})" if resumed_from_step else ""
            JobRepository(session).set_message(self.job_id, f"training started: {total_steps} steps{note}")

    def report(self, progress: Progress) -> None:
        loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
        message = f"training: step {progress.step}/{progress.total_steps}, epoch {progress.epoch:.2f}{loss}"
        percent = 100.0 * progress.step / max(progress.total_steps, 1)
        with self.scope() as session:
            jobs = JobRepository(session)
            recorded = jobs.record_progress(
                self.job_id, progress=percent, done=progress.step, total=progress.total_steps, message=message
            )
            if not recorded:
                return
            repo = TrainingRepository(session)
            repo.update_run(
                self.job_id,
                step=progress.step,
                total_steps=progress.total_steps,
                epoch=progress.epoch,
                loss=progress.loss,
                seconds_per_step=progress.seconds_per_step,
                eta_seconds=progress.eta_seconds,
            )
            params = repo.job_params(self.job_id)
            if progress.loss is not None:
                point = {"step": progress.step, "epoch": progress.epoch, "loss": progress.loss}
                params[loss_history.HISTORY_KEY] = loss_history.with_point(loss_history.history_of(params), point)
                jobs.set_params(self.job_id, params)
            milestones = list(params.get("progress_milestones") or [])
            lifecycle.report_progress(session, self.job_id, percent, milestones)

    def evaluated(self, name: str, metrics: dict[str, Any]) -> None:
        with self.scope() as session:
            TrainingRepository(session).set_eval(self.job_id, name, metrics)

    def evaluated_at(self, step: int, epoch: float, metrics: dict[str, Any], best_step: int | None) -> None:
        point = {"step": step, "epoch": epoch, **{k: metrics[k] for k in eval_history.METRICS if k in metrics}}
        with self.scope() as session:
            jobs = JobRepository(session)
            if not jobs.lock_running(self.job_id):
                return
            params = TrainingRepository(session).job_params(self.job_id)
            params[eval_history.HISTORY_KEY] = eval_history.with_point(eval_history.history_of(params), point)
            params[eval_history.BEST_STEP_KEY] = best_step
            jobs.set_params(self.job_id, params)
            best = f"; best MRR@10 so far at step {best_step}" if best_step is not None else ""
            jobs.set_message(self.job_id, f"evaluated at step {step}: MRR@10 {metrics.get('mrr@10', 0):.4f}{best}")

    def nearest_chunks(self, vectors: np.ndarray, k: int) -> list[list[str]]:
        with self.scope() as session:
            run = TrainingRepository(session).get_run(self.job_id)
            assert run is not None
            collection_id = int(run.hyperparams["hard_negatives"]["collection_id"])
            collection = CollectionRepository(session).get_by_id(collection_id)
            if collection is None:
                raise LookupError(f"the collection to mine hard negatives from (id {collection_id}) was deleted")
            version = CollectionRepository(session).active_version(collection_id)
            store = VectorStore(session)
            return [
                [row.text for row in store.search(version, v, top_k=k, metadata_filter=None, ef_search=ef)]
                for v, ef in ((v, max(k, self.settings.search_ef_search)) for v in vectors)
            ]

    def checkpointed(self, step: int, path: Path) -> None:
        with self.scope() as session:
            TrainingRepository(session).update_run(self.job_id, checkpoint_path=str(path), checkpoint_step=step)

    def should_stop(self) -> StopReason | None:
        if self.shutdown_requested():
            return StopReason.SHUTDOWN
        with self.scope() as session:
            status = TrainingRepository(session).job_status(self.job_id)
        return None if status == JobStatus.RUNNING.value else StopReason.CANCELLED


def run_training(
    scope: Scope,
    job_id: uuid.UUID,
    train: TrainFn,
    settings: Settings,
    shutdown_requested: Callable[[], bool] = lambda: False,
) -> RunOutcome:
    """Run a training job to a registered model, a cancel, a failure or (on shutdown) a checkpoint to resume.

    Database and broker outages propagate, so the task retries and resumes from the last checkpoint.
    """
    with training_lease(scope, job_id) as held:
        if not held:
            log.warning("training job %s is being trained by another worker: this delivery is dropped", job_id)
            return RunOutcome.SKIPPED
        return _run_leased(scope, job_id, train, settings, shutdown_requested)


def _run_leased(
    scope: Scope,
    job_id: uuid.UUID,
    train: TrainFn,
    settings: Settings,
    shutdown_requested: Callable[[], bool],
) -> RunOutcome:
    assert settings.models_dir is not None
    spec = _claim(scope, job_id, settings)
    if spec is None:
        return RunOutcome.SKIPPED
    hooks = _DbHooks(scope, job_id, shutdown_requested, settings)
    try:
        result = train(_with_base_path(spec, settings), hooks)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        # The store a base model is installed from not answering: retried later, resuming from a checkpoint.
        raise_if_unavailable(exc, f"training job {job_id}")
        log.exception("training job %s failed", job_id)
        # The job's error is the tenant's to read; the log above keeps the paths for the operator.
        _fail(scope, job_id, without_server_paths(f"{type(exc).__name__}: {exc}", settings))
        storage.remove_tree(storage.job_dir(settings.models_dir, job_id))
        return RunOutcome.FAILED
    if result.stopped is StopReason.SHUTDOWN:
        with scope() as session:
            JobRepository(session).set_message(
                job_id,
                f"interrupted by a worker shutdown at step {result.steps}: resumes from its checkpoint when "
                "a training worker takes it again",
            )
        return RunOutcome.INTERRUPTED
    if result.stopped is StopReason.CANCELLED:
        storage.remove_tree(storage.job_dir(settings.models_dir, job_id))
        return RunOutcome.CANCELLED
    if result.dry_run:
        return _finish_dry_run(scope, job_id, result, settings)
    return _register(scope, job_id, result, settings)


def _finish_dry_run(scope: Scope, job_id: uuid.UUID, result: TrainingResult, settings: Settings) -> RunOutcome:
    """Complete a dry run: the base's held-out metrics and the mining's statistics are its result."""
    assert settings.models_dir is not None
    storage.remove_tree(storage.job_dir(settings.models_dir, job_id))
    with scope() as session:
        if not JobRepository(session).lock_running(job_id):
            return RunOutcome.CANCELLED
        repo = TrainingRepository(session)
        run = repo.get_run(job_id)
        assert run is not None
        repo.update_run(job_id, eval={**(run.eval or {}), **result.eval}, eta_seconds=None)
        lifecycle.finish(
            session, job_id, JobStatus.SUCCEEDED, message=_dry_run_message(result), error=None, progress=100.0
        )
        session.commit()
    return RunOutcome.COMPLETED


def _dry_run_message(result: TrainingResult) -> str:
    parts = ["dry run: nothing trained or registered"]
    base = result.eval.get("base") or {}
    if "mrr@10" in base:
        parts.append(f"base held-out recall@10 {base['recall@10']:.3f}, MRR@10 {base['mrr@10']:.3f}")
    mining = result.eval.get("mining")
    if mining:
        parts.append(
            f"{mining['negatives']} negatives mined for {mining['mined_pairs']} pairs "
            f"({mining.get('dropped_false_negatives', 0)} likely false negatives skipped)"
        )
    return "; ".join(parts)


def _claim(scope: Scope, job_id: uuid.UUID, settings: Settings) -> TrainingSpec | None:
    """Mark the job running and return what to train; None if it is finished, cancelled or gone."""
    assert settings.models_dir is not None
    with scope() as session:
        repo = TrainingRepository(session)
        if JobRepository(session).claim(job_id) is None:
            return None
        run = repo.get_run(job_id)
        if run is None:
            return None
        pairs = repo.pairs(job_id)
        hyperparams = dict(run.hyperparams)
        train, evaluation = split_pairs(pairs, int(hyperparams.get("eval_pairs", 0)), int(hyperparams["seed"]))
        return TrainingSpec(
            job_id=job_id,
            method=run.method,
            base_model=run.base_model,
            base_path=None,
            train_pairs=train,
            eval_pairs=evaluation,
            hyperparams=hyperparams,
            checkpoint_dir=storage.checkpoint_dir(settings.models_dir, job_id),
            output_dir=storage.staging_dir(settings.models_dir, job_id),
            progress_every_steps=settings.training_progress_every_steps,
            checkpoint_every_steps=settings.training_checkpoint_every_steps,
            base_eval=(run.eval or {}).get("base"),
            quality=TrainingQuality(
                mining_candidates=settings.training_mining_candidates,
                mining_relative_margin=settings.training_mining_relative_margin,
                mining_max_similarity=settings.training_mining_max_similarity_to_positive,
                evals_per_run=settings.training_evals_per_run,
                bootstrap_resamples=settings.training_bootstrap_resamples,
            ),
        )


def _with_base_path(spec: TrainingSpec, settings: Settings) -> TrainingSpec:
    """Return ``spec`` with its base model's folder; raises (failing the job) if the base is gone meanwhile."""
    model_cache.ensure_installed(spec.base_model, settings, fresh=True)
    base = resolve_model(spec.base_model, settings)
    return replace(spec, base_model=base.name, base_path=base.path)


def _fail(scope: Scope, job_id: uuid.UUID, error: str) -> None:
    with scope() as session:
        run = TrainingRepository(session).get_run(job_id)
        # run.step is the last step reported (every EMBEDQ_TRAINING_PROGRESS_EVERY_STEPS), not the failing one.
        step = run.step if run else 0
        message = f"training failed after step {step}" if step else "training failed before its first reported step"
        lifecycle.finish(session, job_id, JobStatus.FAILED, message=message, error=error)


def _publish(store: ArtifactStore, staging: Path, alias: str, settings: Settings) -> artifacts.Manifest:
    """Upload the trained folder; a store that does not answer is waited out here, the trained model in hand.

    Up to EMBEDQ_TASK_MAX_RETRIES more tries, 1 s apart and doubling to at most 60 s (about 3 minutes with
    the default 8), before the job fails: a run of hours is not thrown away for a minute's outage.
    """
    for attempt in range(settings.task_max_retries + 1):
        try:
            return artifacts.publish_folder(store, staging, alias)
        except Exception as exc:
            if attempt == settings.task_max_retries or not unavailable(exc):
                raise
            delay = min(2**attempt, 60)
            log.warning("publishing %s: the artifact store did not answer (%s); again in %d s", alias, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _register(scope: Scope, job_id: uuid.UUID, result: TrainingResult, settings: Settings) -> RunOutcome:
    """Publish the trained folder to the artifact store, register its alias with that revision, finish the job.

    The upload comes first and outside the transaction (it may take minutes); the alias points at the
    revision only once every file and the manifest are in the store, so no host ever meets an alias it cannot
    fetch. This host's copy goes into its models cache after the commit, as any host would install it.
    """
    assert settings.models_dir is not None
    work = storage.job_dir(settings.models_dir, job_id)
    staging = storage.staging_dir(settings.models_dir, job_id)
    store = ArtifactStore.from_settings(settings)
    alias = _alias_of(scope, job_id)
    try:
        manifest = _publish(store, staging, alias, settings)
    except Exception as exc:  # OSError, a bad key, the store's own (botocore) once its outage outlasted the tries
        log.exception("training job %s: could not publish %s to the artifact store", job_id, alias)
        error = f"could not upload the trained model to the artifact store ({type(exc).__name__}: {exc})"
        _fail(scope, job_id, without_server_paths(error + "; check EMBEDQ_ARTIFACT_STORE and train again", settings))
        storage.remove_tree(work)
        return RunOutcome.FAILED
    try:
        registered = _register_revision(scope, job_id, result, settings, manifest)
    except BaseException:
        _discard(store, alias, manifest.revision)
        raise
    if registered is None:
        _discard(store, alias, manifest.revision)
        storage.remove_tree(work)
        return RunOutcome.CANCELLED
    if isinstance(registered, str):
        _discard(store, alias, manifest.revision)
        storage.remove_tree(work)
        return RunOutcome.FAILED
    artifacts.write_marker(staging, manifest)
    artifacts.adopt(staging, settings.models_dir, alias, manifest.revision, settings.artifact_download_wait_s)
    model_cache.forget(alias)
    if registered.previous is not None and registered.previous != manifest.revision:
        _discard(store, alias, registered.previous)
    storage.remove_tree(work)
    return RunOutcome.COMPLETED


@dataclass(frozen=True)
class _Registered:
    previous: str | None  # the revision the alias pointed at before (an overwrite), now unreferenced


def _alias_of(scope: Scope, job_id: uuid.UUID) -> str:
    with scope() as session:
        run = TrainingRepository(session).get_run(job_id)
        assert run is not None
        return run.alias


def _register_revision(
    scope: Scope, job_id: uuid.UUID, result: TrainingResult, settings: Settings, manifest: artifacts.Manifest
) -> _Registered | str | None:
    """Register the alias at ``manifest``'s revision and finish the job; None if it was cancelled meanwhile,
    the error if the alias was taken meanwhile (the job failed with it)."""
    assert settings.models_dir is not None
    with scope() as session:
        repo = TrainingRepository(session)
        jobs = JobRepository(session)
        if not jobs.lock_running(job_id):
            return None
        run = repo.get_run(job_id)
        job = jobs.get(job_id)
        assert run is not None and job is not None
        target = storage.alias_dir(settings.models_dir, run.alias)
        conflict = _late_conflict(repo, run, target, job)
        if conflict is not None:
            conflict = without_server_paths(conflict, settings)  # the tenant reads it: no server path
            lifecycle.finish(session, job_id, JobStatus.FAILED, message="trained, but not registered", error=conflict)
            session.commit()
            return conflict
        models = RegisteredModelRepository(session)
        before = models.registered(run.alias)
        previous = before.revision if before is not None else None
        models.register(
            RegisteredModel(
                name=run.alias,
                base=run.base_model,
                kind=run.method,
                path=str(target),
                dimension=result.dimension or 0,
                created_by_job=job_id,
                tenant=job.tenant,
                revision=manifest.revision,
            )
        )
        evaluation = {**(run.eval or {}), **result.eval}
        if result.best_step is not None:
            evaluation["selection"] = {
                "metric": "mrr@10",
                "best_step": result.best_step,
                "last_step": result.steps,
                "stopped_early": result.stopped_early,
            }
        repo.update_run(job_id, eval=evaluation, eta_seconds=None)
        lifecycle.finish(
            session, job_id, JobStatus.SUCCEEDED, message=_done_message(run, result), error=None, progress=100.0
        )
        session.commit()
    return _Registered(previous=previous)


def _discard(store: ArtifactStore, alias: str, revision: str) -> None:
    """Remove a revision nothing points at; a failure only leaves files behind (logged), never a broken alias."""
    try:
        artifacts.delete_revision(store, alias, revision)
    except Exception:
        log.warning("could not remove revision %s of %s from the artifact store", revision, alias, exc_info=True)


def _late_conflict(repo: TrainingRepository, run: TrainingRun, target: Path, job: Job) -> str | None:
    """Return why the alias cannot be registered now (someone took it while the job ran), or None."""
    registered = RegisteredModelRepository(repo.session).registered(run.alias)
    if registered is not None and registered.created_by_job != job.id and registered.tenant != job.tenant:
        return f"model {run.alias!r} was taken while this job ran: train again with another model_name"
    if registered is not None and registered.created_by_job != job.id and not run.overwrite:
        return (
            f"model {run.alias!r} was registered by job {registered.created_by_job} while this job ran: "
            "train again with overwrite=true or another model_name"
        )
    if registered is None and target.exists() and artifacts.local_revision(target) is None:
        return (
            f"a folder {target} that fine-tuning did not create appeared while this job ran: "
            "train again with another model_name"
        )
    return None


def _done_message(run: TrainingRun, result: TrainingResult) -> str:
    message = f"trained {result.steps} steps"
    if result.stopped_early:
        message += " (stopped early)"
    if result.best_step is not None and result.best_step != result.steps:
        message += f"; kept step {result.best_step}'s weights, the best held-out MRR@10"
    message += f"; registered model {run.alias!r} ({run.method})"
    base = ((run.eval or {}).get("base") or {}).get("recall@10")
    trained = (result.eval.get("trained") or {}).get("recall@10")
    if base is not None and trained is not None:
        message += f"; held-out recall@10 {base:.3f} -> {trained:.3f}"
    return message
