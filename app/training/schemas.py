"""Request and response bodies of the fine-tuning API, shaped like the embedding service users migrate from."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.jobs.schemas import ProgressMilestones
from app.models.job import JobStatus

ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TRAINING_PASSAGES = "training passages"
COLLECTION_PREFIX = "collection:"


class TrainStatusValue(StrEnum):
    """The status values of the migrated-from service's /train-status."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def of(cls, status: str) -> TrainStatusValue:
        return _STATUS_MAP[JobStatus(status)]


_STATUS_MAP = {
    JobStatus.QUEUED: TrainStatusValue.PENDING,
    JobStatus.RUNNING: TrainStatusValue.RUNNING,
    JobStatus.SUCCEEDED: TrainStatusValue.COMPLETED,
    JobStatus.FAILED: TrainStatusValue.FAILED,
    JobStatus.CANCELLED: TrainStatusValue.CANCELLED,
}


class HardNegatives(BaseModel):
    """Mine hard negatives with the base model before training: passages near each query that are not its answer."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mine: bool = Field(default=True, description="mine negatives for the pairs that came without one")
    per_pair: int = Field(default=1, ge=1, le=5, description="negatives (so triples) per pair")
    source: str = Field(
        default=TRAINING_PASSAGES,
        alias="from",
        description="'training passages' (the file's own positives) or 'collection:<name>' (its chunks; the "
        "collection must hold vectors of the base model)",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, source: str) -> str:
        if source != TRAINING_PASSAGES and not (source.startswith(COLLECTION_PREFIX) and source[11:].strip()):
            raise ValueError(f"from must be {TRAINING_PASSAGES!r} or 'collection:<name>'")
        return source

    @property
    def collection(self) -> str | None:
        """The collection to mine from, or None for the training passages."""
        return self.source.removeprefix(COLLECTION_PREFIX).strip() if self.source != TRAINING_PASSAGES else None


class FineTuneRequest(BaseModel):
    """A full fine-tune of ``base_model`` on (query, passage) pairs, served afterwards as ``model_name``.

    Pairs come as ``text_content`` (TSV lines ``query<TAB>passage[<TAB>hard negative]``, or JSONL lines
    ``{"query", "positive", "negative"?}``) or as an uploaded file in a multipart request.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text_content": "what is a cat\ta small domesticated feline\n", "model_name": "my-model"}]
        },
    )

    text_content: str | None = Field(default=None, description="TSV or JSONL training pairs, one per line")
    model_name: str = Field(description="the alias the trained model is served as (letters, digits, '.', '_', '-')")
    base_model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    epochs: int | None = Field(
        default=None, ge=1, le=100, description="default: chosen from the data (see the fine-tuning guide)"
    )
    batch_size: int = Field(default=16, ge=2, le=1024, description="pairs per step; each is the others' negative")
    mini_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="embed each batch this many texts at a time (GradCache: the same loss as batch_size, "
        "the memory of mini_batch_size); default: the whole batch at once",
    )
    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="default: chosen from the data and method (see the fine-tuning guide)"
    )
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_seq_length: int | None = Field(default=None, ge=8, le=8192)
    overwrite: bool = Field(default=False, description="replace an alias an earlier fine-tune registered")
    eval_share: float | None = Field(default=None, ge=0, lt=1, description="share of pairs held out for evaluation")
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    progress_milestones: ProgressMilestones | None = None
    hard_negatives: HardNegatives | None = None
    eval_every_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="evaluate the held-out pairs every this many steps; default: 10 times a run",
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=0, le=10_000, description="stop after this many evaluations without a better MRR@10; 0: never"
    )
    dry_run: bool = Field(
        default=False, description="report the base's held-out metrics and the mined negatives; train nothing"
    )

    @model_validator(mode="after")
    def _mini_batch(self) -> FineTuneRequest:
        if self.mini_batch_size is not None and self.mini_batch_size > self.batch_size:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must not exceed batch_size ({self.batch_size})")
        return self

    @field_validator("model_name")
    @classmethod
    def _alias(cls, name: str) -> str:
        if not ALIAS_PATTERN.fullmatch(name) or ".." in name:
            raise ValueError(
                "model_name must be 1-100 letters, digits, '.', '_' or '-', start with a letter or digit, "
                "and contain no '/' or '..': it names a folder under EMBEDQ_MODELS_DIR"
            )
        return name


class LoraFineTuneRequest(FineTuneRequest):
    """A LoRA fine-tune: only low-rank adapters are trained and saved, and served over the unchanged base."""

    r: int = Field(default=16, ge=1, le=1024)
    lora_alpha: float = Field(default=32, gt=0, le=100_000)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None, min_length=1, description="module names to adapt; default: peft's choice for the architecture"
    )
    use_qlora: bool = Field(default=False, description="4-bit base weights (needs CUDA and bitsandbytes)")


class FineTuneAccepted(BaseModel):
    job_id: str
    status: TrainStatusValue = TrainStatusValue.PENDING


class TrainingData(BaseModel):
    """What was made of the uploaded pairs."""

    pairs: int
    with_negatives: int
    train_pairs: int
    eval_pairs: int
    skipped_lines: int
    skipped_examples: list[dict[str, Any]]


class LossPoint(BaseModel):
    """One progress report's training loss: the mean over the steps since the previous report."""

    step: int
    epoch: float
    loss: float


class EvalPoint(BaseModel):
    """One held-out evaluation during training (step 0: the base model)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    step: int
    epoch: float
    recall_at_1: float | None = Field(default=None, alias="recall@1")
    recall_at_10: float | None = Field(default=None, alias="recall@10")
    mrr_at_10: float | None = Field(default=None, alias="mrr@10")


class TrainStatus(BaseModel):
    """A training job as the migrated-from /train-status returns it, plus loss (and its history), eval and model."""

    status: TrainStatusValue
    progress: float = Field(description="0 to 100")
    message: str | None
    error: str | None
    steps: int
    epoch: float
    loss: float | None
    loss_history: list[LossPoint] = Field(
        description="every reported loss, oldest first (thinned evenly past 1000 points): the loss curve"
    )
    eval_history: list[EvalPoint] = Field(
        default_factory=list, description="each held-out evaluation during training, oldest first: the eval curve"
    )
    best_step: int | None = Field(
        default=None, description="the step with the best held-out MRR@10 so far: the weights that are registered"
    )
    total_steps: int
    eta_seconds: float | None
    seconds_per_step: float | None = Field(description="mean training time per step so far")
    eval: dict[str, Any] | None = Field(
        description="recall@1, recall@10 and MRR@10 (with query count and bootstrap 95% intervals) of the base and "
        "trained model, the mined negatives' statistics, and which step was kept"
    )
    model: str | None = Field(description="the alias, once the trained model is registered")
    data: TrainingData


class RegisteredModelOut(BaseModel):
    """A model alias fine-tuning registered."""

    name: str
    base: str
    kind: str
    path: str | None = Field(description="the model folder on the server; null for keys that are not admin")
    dimension: int
    created_by_job: uuid.UUID | None
    created_at: datetime
