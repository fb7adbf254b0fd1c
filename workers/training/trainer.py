"""The training loop: (cached) MultipleNegativesRankingLoss over no-duplicate batches, full or LoRA, step by step.

A plain loop rather than sentence-transformers' Trainer, for exact control between steps: progress goes
to the hooks every few steps, the stop flag (cancel or worker shutdown) is read after every step, and a
checkpoint every ``checkpoint_every_steps`` (and on shutdown) lets a redelivered task resume where this
one stopped. The batches are planned up front from the seed, so a resumed run skips exactly what was done.
Before the first step, hard negatives may be mined with the base model (``mining``); during the run the
held-out pairs are evaluated every ``eval_every_steps`` and the best weights are the ones saved
(``selection``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import get_linear_schedule_with_warmup

from app.core.config import get_settings
from app.training import storage
from app.training.pairs import Pair
from app.training.spec import Progress, StopReason, TrainingHooks, TrainingResult, TrainingSpec
from workers.runtime.adapters import write_pointer
from workers.runtime.device import pick_device
from workers.training import checkpoints
from workers.training.data import EpochPlan, batch_columns, plan_batches
from workers.training.evaluation import retrieval_metrics
from workers.training.mining import MiningRule, mine_negatives
from workers.training.selection import Selection

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "collection:"
ContrastiveLoss = MultipleNegativesRankingLoss | CachedMultipleNegativesRankingLoss


class QLoraUnavailableError(RuntimeError):
    """QLoRA was asked for on a worker without CUDA or bitsandbytes."""


def train(spec: TrainingSpec, hooks: TrainingHooks) -> TrainingResult:
    """Train ``spec`` to a saved model in ``spec.output_dir``, or stop early when the hooks say so.

    A dry run (``hyperparams["dry_run"]``) mines and evaluates the base, and trains and saves nothing.
    """
    hp = spec.hyperparams
    torch.manual_seed(int(hp["seed"]))
    model = load_model(spec)
    checkpoint = checkpoints.load(spec.checkpoint_dir)
    pairs, mining = training_pairs(spec, hooks, model)
    if hp.get("dry_run"):
        base = _evaluate(model, spec)
        hooks.evaluated("base", base)
        return TrainingResult(steps=0, dry_run=True, eval={"base": base, **({"mining": mining} if mining else {})})
    plan = plan_batches(pairs, int(hp["batch_size"]), int(hp["epochs"]), int(hp["seed"]))
    total = len(plan.batches)
    loss_fn = contrastive_loss(model, hp)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(hp["learning_rate"]))
    warmup = math.ceil(float(hp["warmup_ratio"]) * total)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    if checkpoint is not None:
        checkpoints.restore(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        log.info("job %s resumes from step %d of %d", spec.job_id, checkpoint.step, total)
    start = checkpoint.step if checkpoint is not None else 0
    patience = int(hp.get("early_stopping_patience") or 0)
    selection = Selection.resumed(
        spec.checkpoint_dir, patience, checkpoint.state.get("selection") if checkpoint is not None else None
    )
    hooks.started(total, start or None)
    if start == 0 and mining:
        hooks.evaluated("mining", mining)
    eval_every = _eval_every(spec, total)
    if start == 0 and spec.eval_pairs:
        base = _evaluate(model, spec)
        if spec.base_eval is None:
            hooks.evaluated("base", base)
        if eval_every:
            hooks.evaluated_at(0, 0.0, base, None)
    # No evaluation during the warmup: its first step runs at learning rate 0, and the next few barely move the
    # weights, so a "best" step there would register (nearly) the base.
    loop = _Loop(spec, hooks, model, plan, loss_fn, optimizer, scheduler, start, selection, (eval_every, warmup + 1))
    stopped = loop.run()
    if stopped is not None:
        return TrainingResult(steps=loop.step, stopped=stopped)
    if selection.best_step is not None:
        selection.restore_best(model)
    trained = _evaluate(model, spec)
    _save(model, spec)
    return TrainingResult(
        steps=loop.step,
        dimension=model.get_embedding_dimension(),
        eval={"trained": trained},
        best_step=selection.best_step,
        stopped_early=loop.stopped_early,
    )


def training_pairs(
    spec: TrainingSpec, hooks: TrainingHooks, model: SentenceTransformer
) -> tuple[list[Pair], dict[str, Any] | None]:
    """Return the pairs to train on: with mined triples when asked (mined once per job), and the mining's stats."""
    wanted = spec.hyperparams.get("hard_negatives") or {}
    if not wanted.get("mine"):
        return spec.train_pairs, None
    earlier = checkpoints.load_mined(spec.checkpoint_dir)
    if earlier is not None:
        return earlier
    rule = MiningRule.of(spec.quality, per_pair=int(wanted.get("per_pair", 1)))
    source = hooks.nearest_chunks if str(wanted.get("from", "")).startswith(COLLECTION_PREFIX) else None
    pairs, stats = mine_negatives(model, spec.train_pairs, rule, source)
    stats = {"from": wanted.get("from"), **stats}
    checkpoints.save_mined(spec.checkpoint_dir, pairs, stats)
    return pairs, stats


def contrastive_loss(model: SentenceTransformer, hp: dict[str, Any]) -> ContrastiveLoss:
    """Return MNRL, or its GradCache variant when ``mini_batch_size`` is set (same loss, bounded memory)."""
    if hp.get("mini_batch_size"):
        return CachedMultipleNegativesRankingLoss(model, mini_batch_size=int(hp["mini_batch_size"]))
    return MultipleNegativesRankingLoss(model)


def _eval_every(spec: TrainingSpec, total: int) -> int:
    """Return how many steps apart to evaluate during training; 0 for never (no held-out pairs)."""
    if not spec.eval_pairs:
        return 0
    given = spec.hyperparams.get("eval_every_steps")
    return int(given) if given else max(1, math.ceil(total / spec.quality.evals_per_run))


def _evaluate(model: SentenceTransformer, spec: TrainingSpec) -> dict[str, Any]:
    return retrieval_metrics(model, spec.eval_pairs, resamples=spec.quality.bootstrap_resamples)


class _Loop:
    """Steps ``start+1 .. len(plan.batches)``, reporting, evaluating, checkpointing and checking for a stop."""

    def __init__(
        self,
        spec: TrainingSpec,
        hooks: TrainingHooks,
        model: SentenceTransformer,
        plan: EpochPlan,
        loss_fn: ContrastiveLoss,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        start: int,
        selection: Selection,
        evals: tuple[int, int],
    ) -> None:
        self.spec, self.hooks, self.model, self.plan = spec, hooks, model, plan
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.selection = selection
        self.eval_every, self.eval_from = evals  # every so many steps, from this step on (and after the last)
        self.step = start
        self.start = start
        self.started_at = time.perf_counter()
        self.losses: list[float] = []
        self.stopped_early = False

    def run(self) -> StopReason | None:
        """Return None when every step ran (or early stopping ended the run), else why it stopped (after
        checkpointing on a shutdown)."""
        stop = self.hooks.should_stop()
        total = len(self.plan.batches)
        self.model.train()
        while stop is None and self.step < total and not self.stopped_early:
            _, indices = self.plan.batches[self.step]
            self.losses.append(self._train_step(indices))
            self.step += 1
            if self.step % self.spec.progress_every_steps == 0 or self.step == total:
                self._report()
            # eval_every 0: no held-out pairs (eval_share 0), never evaluated; checked first, as it divides.
            if self.eval_every and (
                self.step == total or (self.step >= self.eval_from and self.step % self.eval_every == 0)
            ):
                self._evaluate()
            if self.step % self.spec.checkpoint_every_steps == 0 and self.step < total:
                self._checkpoint()
            stop = self.hooks.should_stop()
        if self.stopped_early:
            return None
        if stop is StopReason.SHUTDOWN and self.step < total:
            if self.losses:
                self._report()
            self._checkpoint()
        return stop if self.step < total or stop is StopReason.CANCELLED else None

    def _train_step(self, indices: list[int]) -> float:
        features = [self.model.preprocess(texts) for texts in batch_columns(self.plan.pairs, indices)]
        features = [{k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
        loss = self.loss_fn(features, None)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _evaluate(self) -> None:
        metrics = _evaluate(self.model, self.spec)
        self.selection.consider(self.step, metrics, self.model)
        epoch = round(self.plan.epoch_progress(self.step), 4)
        assert self.selection.best_step is not None
        self.hooks.evaluated_at(self.step, epoch, metrics, self.selection.best_step)
        if self.selection.exhausted and self.step < len(self.plan.batches):
            if self.losses:
                self._report()
            best = self.selection.best_step
            log.info("job %s stops early at step %d: best at step %d", self.spec.job_id, self.step, best)
            self.stopped_early = True

    def _report(self) -> None:
        total = len(self.plan.batches)
        done = self.step - self.start
        per_step = (time.perf_counter() - self.started_at) / done if done else None
        self.hooks.report(
            Progress(
                step=self.step,
                total_steps=total,
                epoch=round(self.plan.epoch_progress(self.step), 4),
                loss=round(sum(self.losses) / len(self.losses), 6) if self.losses else None,
                seconds_per_step=round(per_step, 4) if per_step is not None else None,
                eta_seconds=round(per_step * (total - self.step), 1) if per_step is not None else None,
            )
        )
        self.losses.clear()

    def _checkpoint(self) -> None:
        path = checkpoints.save(
            self.spec.checkpoint_dir,
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            selection=self.selection.state(),
        )
        self.hooks.checkpointed(self.step, path)


def load_model(spec: TrainingSpec) -> SentenceTransformer:
    """Return the base model ready to train: all weights trainable, or frozen under fresh LoRA adapters."""
    hp = spec.hyperparams
    device = pick_device(get_settings().device)
    model_kwargs: dict[str, Any] = {}
    if hp.get("use_qlora"):
        model_kwargs["quantization_config"] = _qlora_config(device)
    source = str(spec.base_path) if spec.base_path is not None else spec.base_model
    model = SentenceTransformer(
        source,
        device=str(device),
        local_files_only=spec.base_path is not None,
        model_kwargs=model_kwargs or None,
    )
    if hp.get("max_seq_length"):
        model.max_seq_length = int(hp["max_seq_length"])
    if spec.method == "lora":
        _add_lora(model, hp)
    return model


def _add_lora(model: SentenceTransformer, hp: dict[str, Any]) -> None:
    from peft import LoraConfig, TaskType, prepare_model_for_kbit_training

    if hp.get("use_qlora"):
        prepare_model_for_kbit_training(model.transformers_model)
    model.add_adapter(
        LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=int(hp["r"]),
            lora_alpha=float(hp["lora_alpha"]),
            lora_dropout=float(hp["lora_dropout"]),
            # None lets peft pick the attention projections it knows for the architecture (query/value for BERT).
            target_modules=hp.get("target_modules"),
        )
    )


def _qlora_config(device: torch.device) -> Any:
    if device.type != "cuda":
        raise QLoraUnavailableError(
            f"QLoRA needs a CUDA device but this worker runs on {device}: train plain LoRA (use_qlora=false) "
            "or run the training worker on a GPU host"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QLoraUnavailableError(
            "QLoRA needs bitsandbytes on the training worker: `pip install bitsandbytes`"
        ) from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _save(model: SentenceTransformer, spec: TrainingSpec) -> None:
    """Write the trained model (or adapter plus pointer to its base) to the job's staging folder."""
    storage.remove_tree(spec.output_dir)
    model.save(str(spec.output_dir))
    if spec.method == "lora":
        write_pointer(spec.output_dir, spec.base_model)
