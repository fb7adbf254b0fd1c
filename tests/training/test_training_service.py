"""The training service on real Postgres with the real trainer on a tiny BERT: register, fail, cancel, conflict."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from support.principals import ADMIN

from app.catalog.deletion import unregister
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import ConflictError, InvalidRequestError
from app.jobs.service import cancel_job
from app.maintenance.kinds import RECOVERIES
from app.models.job import Job, JobKind
from app.models.registered_model import RegisteredModel
from app.models.training import TrainingRun
from app.models.webhook import WebhookEvent
from app.training import storage
from app.training.lease import training_lease
from app.training.runner import RunOutcome, run_training
from app.training.schemas import FineTuneRequest, LoraFineTuneRequest
from app.training.service import create_training_job, requeue_training, train_status
from app.training.spec import Progress, StopReason, TrainingHooks, TrainingResult, TrainingSpec
from app.webhooks.schemas import EndpointCreate
from app.webhooks.service import create_endpoint
from workers.training.trainer import train

TSV = "\n".join(f"the {w} number {i}\ta short text on {w} and item {i}" for i, w in enumerate(["cat", "dog"] * 12))


def create(settings: Settings, request: FineTuneRequest) -> uuid.UUID:
    with session_scope() as session:
        return create_training_job(session, request, TSV, "auto", settings, ADMIN).id


def state(job_id: uuid.UUID) -> tuple[Job, TrainingRun]:
    with session_scope() as session:
        job, run = session.get(Job, job_id), session.get(TrainingRun, job_id)
        assert job is not None and run is not None
        return job, run


def registered(name: str) -> RegisteredModel | None:
    with session_scope() as session:
        return session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def alias_dir(settings: Settings, alias: str) -> Path:
    assert settings.models_dir is not None
    return storage.alias_dir(settings.models_dir, alias)


def work_dir(settings: Settings, job_id: uuid.UUID) -> Path:
    assert settings.models_dir is not None
    return storage.job_dir(settings.models_dir, job_id)


def request(base: str, alias: str, **extra: object) -> FineTuneRequest:
    defaults = {"batch_size": 4, "learning_rate": 1e-3, "epochs": 1, "early_stopping_patience": 0}
    return FineTuneRequest(model_name=alias, base_model=base, **{**defaults, **extra})


def test_a_full_job_registers_its_alias_with_evaluation(settings: Settings, tiny_base: str) -> None:
    alias = f"ft-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias))
    try:
        assert run_training(session_scope, job_id, train, settings) is RunOutcome.COMPLETED
        job, run = state(job_id)
        assert job.status == "succeeded" and job.progress == 100 and job.finished_at is not None
        assert run.step == run.total_steps == 5 and run.loss is not None
        assert set(run.eval or {}) == {"base", "trained", "selection"} and "recall@10" in run.eval["trained"]
        assert "held-out recall@10" in (job.message or "")
        with session_scope() as session:
            history = train_status(session, job_id, ADMIN).loss_history
        assert [p.step for p in history] == [1, 2, 3, 4, 5] and history[-1].loss == run.loss
        model = registered(alias)
        assert model is not None and (model.kind, model.base, model.dimension) == ("full", tiny_base, 32)
        assert model.created_by_job == job_id and Path(model.path) == alias_dir(settings, alias)
        assert (alias_dir(settings, alias) / "model.safetensors").is_file()
        assert not work_dir(settings, job_id).exists()
        # A redelivered task finds the job finished and does nothing.
        assert run_training(session_scope, job_id, train, settings) is RunOutcome.SKIPPED

        # overwrite=true replaces the folder and the row.
        second = create(settings, request(tiny_base, alias, overwrite=True, seed=5))
        assert run_training(session_scope, second, train, settings) is RunOutcome.COMPLETED
        replaced = registered(alias)
        assert replaced is not None and replaced.created_by_job == second
        assert not work_dir(settings, second).exists()
    finally:
        shutil.rmtree(alias_dir(settings, alias), ignore_errors=True)


def test_a_failing_job_is_failed_with_its_error_and_registers_nothing(settings: Settings, tiny_base: str) -> None:
    alias = f"bad-{uuid.uuid4().hex[:6]}"
    lora = LoraFineTuneRequest(model_name=alias, base_model=tiny_base, batch_size=4, target_modules=["no_such_layer"])
    job_id = create(settings, lora)
    assert run_training(session_scope, job_id, train, settings) is RunOutcome.FAILED
    job, _ = state(job_id)
    assert job.status == "failed" and "no_such_layer" in (job.error or "")
    assert job.message == "training failed before its first reported step"  # not "at step 0": it never began
    assert registered(alias) is None and not alias_dir(settings, alias).exists()
    assert not work_dir(settings, job_id).exists()


def cancelling(after_step: int):
    """Return a TrainFn running the real trainer that cancels its own job (as the API would) after a step."""

    class CancelAfter:
        def __init__(self, hooks: TrainingHooks, job_id: uuid.UUID) -> None:
            self.hooks, self.job_id = hooks, job_id

        def __getattr__(self, name: str):
            return getattr(self.hooks, name)

        def report(self, progress: Progress) -> None:
            self.hooks.report(progress)
            if progress.step == after_step:
                with session_scope() as session:
                    cancel_job(session, self.job_id, ADMIN)

    def run(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
        return train(spec, CancelAfter(hooks, spec.job_id))

    return run


def test_a_run_without_held_out_pairs_trains_past_its_warmup(settings: Settings, tiny_base: str) -> None:
    # eval_share 0: nothing to evaluate. The step after the warmup divided by the (zero) evaluation interval.
    alias = f"noeval-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias, eval_share=0, batch_size=2))
    assert run_training(session_scope, job_id, train, settings) is RunOutcome.COMPLETED
    job, run = state(job_id)
    assert job.status == "succeeded" and run.step == run.total_steps > 2, (job.error, run.step, run.total_steps)
    assert registered(alias) is not None


def test_a_model_adapters_stand_on_is_neither_replaced_by_a_lora_nor_deleted(
    settings: Settings, tiny_base: str
) -> None:
    base = f"base-{uuid.uuid4().hex[:6]}"
    adapter = f"{base}-lora"
    standalone = f"{base}-full"  # a full fine-tune over it is a copy of weights of its own: no user of it
    with session_scope() as session:
        session.add(RegisteredModel(name=base, base=tiny_base, kind="full", path="/m/base", dimension=32))
        session.add(RegisteredModel(name=adapter, base=base, kind="lora", path="/m/lora", dimension=32))
        session.add(RegisteredModel(name=standalone, base=base, kind="full", path="/m/full", dimension=32))
    lora = LoraFineTuneRequest(model_name=base, base_model=tiny_base, batch_size=4, overwrite=True)
    with session_scope() as session, pytest.raises(ConflictError, match="adapters do not stack") as refused:
        create_training_job(session, lora, TSV, "auto", settings, ADMIN)
    assert adapter in refused.value.message
    with session_scope() as session:  # a full fine-tune may replace it: adapters follow their base's weights
        assert create_training_job(session, request(tiny_base, base, overwrite=True), TSV, "auto", settings, ADMIN)
    with session_scope() as session, pytest.raises(ConflictError, match="trained over it") as kept:
        unregister(session, base, settings, ADMIN)
    assert adapter in kept.value.message and standalone not in kept.value.message and registered(base) is not None


def test_two_requests_for_one_alias_at_once_make_one_job(settings: Settings, tiny_base: str) -> None:
    alias = f"race-{uuid.uuid4().hex[:6]}"
    outcomes: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait(10)
        try:
            create(settings, request(tiny_base, alias))
            outcomes.append("created")
        except ConflictError as exc:
            outcomes.append(exc.message)

    thread = threading.Thread(target=second)
    thread.start()
    with session_scope() as session:
        create_training_job(session, request(tiny_base, alias), TSV, "auto", settings, ADMIN)
        first_in.set()
        time.sleep(1.0)  # the second request reaches the alias check while this job is not committed yet
    thread.join(30)
    assert len(outcomes) == 1 and "is already producing model" in outcomes[0], outcomes


def test_one_pair_repeated_is_not_enough_pairs_to_train(settings: Settings, tiny_base: str) -> None:
    # 40 copies of one pair: the no-duplicates sampler makes batches of one, every loss 0, a model of nothing.
    with session_scope() as session, pytest.raises(InvalidRequestError, match="distinct pairs") as refused:
        create_training_job(session, request(tiny_base, "dup-x"), "q\tp\n" * 40, "auto", settings, ADMIN)
    assert "repeat another" in refused.value.message


def test_cancel_between_steps_leaves_no_model(settings: Settings, tiny_base: str) -> None:
    alias = f"cx-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias))
    assert run_training(session_scope, job_id, cancelling(after_step=2), settings) is RunOutcome.CANCELLED
    job, run = state(job_id)
    assert job.status == "cancelled" and run.step == 2
    assert registered(alias) is None and not alias_dir(settings, alias).exists()
    assert not work_dir(settings, job_id).exists()


def test_a_second_delivery_while_another_worker_trains_the_job_is_dropped(settings: Settings, tiny_base: str) -> None:
    alias = f"lease-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias))
    seen: list[RunOutcome] = []

    def train_while_a_redelivery_arrives(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
        # The broker handed the message to a second worker while this one trains.
        seen.append(run_training(session_scope, job_id, train, settings))
        return train(spec, hooks)

    assert run_training(session_scope, job_id, train_while_a_redelivery_arrives, settings) is RunOutcome.COMPLETED
    assert seen == [RunOutcome.SKIPPED]
    job, _ = state(job_id)
    assert job.status == "succeeded" and registered(alias) is not None
    with training_lease(session_scope, job_id) as held:  # released with the run
        assert held


def test_cancel_before_the_worker_starts_skips_the_job(settings: Settings, tiny_base: str) -> None:
    job_id = create(settings, request(tiny_base, f"early-{uuid.uuid4().hex[:6]}"))
    with session_scope() as session:
        cancel_job(session, job_id, ADMIN)
    assert run_training(session_scope, job_id, train, settings) is RunOutcome.SKIPPED


def test_an_alias_taken_while_training_fails_the_job_instead_of_replacing(settings: Settings, tiny_base: str) -> None:
    alias = f"race-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias))

    def train_then_someone_registers(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
        result = train(spec, hooks)
        with session_scope() as session:
            session.add(RegisteredModel(name=alias, base="other", kind="full", path="/elsewhere", dimension=8))
        return result

    assert run_training(session_scope, job_id, train_then_someone_registers, settings) is RunOutcome.FAILED
    job, _ = state(job_id)
    assert job.status == "failed" and "was registered by job" in (job.error or "")
    model = registered(alias)
    assert model is not None and model.base == "other" and not alias_dir(settings, alias).exists()


def test_a_folder_that_appeared_while_training_fails_the_job_without_naming_the_server_s_path(
    settings: Settings, tiny_base: str
) -> None:
    alias = f"folder-{uuid.uuid4().hex[:6]}"
    job_id = create(settings, request(tiny_base, alias))

    def train_then_a_folder_appears(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
        result = train(spec, hooks)
        alias_dir(settings, alias).mkdir(parents=True)
        (alias_dir(settings, alias) / "not-a-model.txt").write_text("someone else's")
        return result

    assert run_training(session_scope, job_id, train_then_a_folder_appears, settings) is RunOutcome.FAILED
    job, _ = state(job_id)
    assert job.status == "failed" and "that fine-tuning did not create appeared" in (job.error or ""), job.error
    assert settings.models_dir is not None and str(settings.models_dir) not in job.error
    assert "$EMBEDQ_MODELS_DIR" in job.error
    assert (alias_dir(settings, alias) / "not-a-model.txt").exists()  # left alone


def test_the_reaper_requeues_lost_training_jobs_to_resume(settings: Settings, tiny_base: str, redis_client) -> None:
    for kind, task in ((JobKind.FINE_TUNE, "train.full"), (JobKind.FINE_TUNE_LORA, "train.lora")):
        recovery = RECOVERIES[kind.value]
        assert recovery.requeue is requeue_training and {t.value for t in recovery.task_names} == {task}
        assert recovery.grace_s is not None and recovery.grace_s(settings) == settings.training_reaper_grace_s


def test_a_base_model_gone_before_the_worker_starts_fails_the_job(settings: Settings, tiny_base: str) -> None:
    job_id = create(settings, request(tiny_base, f"gone-{uuid.uuid4().hex[:6]}"))
    assert settings.models_dir is not None
    shutil.rmtree(settings.models_dir / tiny_base)
    assert run_training(session_scope, job_id, train, settings) is RunOutcome.FAILED
    job, _ = state(job_id)
    assert job.status == "failed" and "unknown model" in (job.error or "")


def reporting(losses: dict[int, float], stopped: StopReason):
    """Return a TrainFn that reports ``losses`` by step and stops as a worker shutdown or a cancel would."""

    def run(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
        for step, loss in losses.items():
            hooks.report(Progress(step, 5, step / 5, loss, seconds_per_step=0.1, eta_seconds=1.0))
        return TrainingResult(steps=max(losses), stopped=stopped)

    return run


def test_the_loss_history_keeps_every_report_and_a_resumed_run_replaces_the_steps_it_redoes(
    settings: Settings, tiny_base: str
) -> None:
    job_id = create(settings, request(tiny_base, f"curve-{uuid.uuid4().hex[:6]}"))
    first = reporting({1: 2.0, 2: 1.5, 3: 1.25}, StopReason.SHUTDOWN)
    assert run_training(session_scope, job_id, first, settings) is RunOutcome.INTERRUPTED
    # Resumed from a checkpoint at step 2: step 3 is trained (and reported) again.
    resumed = reporting({3: 1.0, 4: 0.75}, StopReason.SHUTDOWN)
    assert run_training(session_scope, job_id, resumed, settings) is RunOutcome.INTERRUPTED
    with session_scope() as session:
        status = train_status(session, job_id, ADMIN)
    assert [(p.step, p.loss) for p in status.loss_history] == [(1, 2.0), (2, 1.5), (3, 1.0), (4, 0.75)]
    assert status.loss_history[-1].epoch == 0.8 and status.loss == 0.75


def test_progress_milestones_record_one_webhook_event_each_across_a_resume(settings: Settings, tiny_base: str) -> None:
    hooks = settings.model_copy(update={"webhook_allowed_cidrs": ["127.0.0.1/32"]})
    with session_scope() as session:
        create_endpoint(session, EndpointCreate(url="http://127.0.0.1:9/hooks", all_jobs=True), hooks, ADMIN)
    job_id = create(settings, request(tiny_base, f"ms-{uuid.uuid4().hex[:6]}", progress_milestones=[40, 80]))
    assert run_training(session_scope, job_id, reporting({1: 2.0, 2: 1.5}, StopReason.SHUTDOWN), settings) is (
        RunOutcome.INTERRUPTED
    )
    # Resumed from step 1: step 2 (40%) is reported again, then step 4 (80%).
    assert run_training(session_scope, job_id, reporting({2: 1.4, 4: 1.0}, StopReason.SHUTDOWN), settings) is (
        RunOutcome.INTERRUPTED
    )
    with session_scope() as session:
        events = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).all()
        milestones = sorted(json.loads(e.body)["data"]["milestone"] for e in events if e.type == "job.progress")
    assert milestones == [40, 80]
