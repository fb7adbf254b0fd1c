"""The worker's trainer on a tiny real BERT: batches without duplicates, exact resume, LoRA folders served."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel
from app.core.config import get_settings
from app.training.pairs import Pair, planned_steps
from app.training.spec import Progress, StopReason, TrainingSpec
from workers.runtime.adapters import ADAPTER_POINTER, base_model_of
from workers.runtime.encoder import Encoder
from workers.training.data import batch_columns, plan_batches
from workers.training.trainer import train

WORDS = "cat dog house river mountain city music book water food language machine".split()


def make_pairs(n: int) -> list[Pair]:
    return [
        Pair(f"the {WORDS[i % 12]} {i}", f"a text about {WORDS[i % 12]} and {WORDS[(i * 5) % 12]} {i}")
        for i in range(n)
    ]


class RecordingHooks:
    """Hooks that remember what the trainer said and stop on request."""

    def __init__(self, stop_after: int | None = None, reason: StopReason = StopReason.SHUTDOWN) -> None:
        self.stop_after, self.reason = stop_after, reason
        self.reports: list[Progress] = []
        self.evals: dict[str, dict[str, float]] = {}
        self.curve: list[tuple[int, float, int | None]] = []  # (step, MRR@10, best step so far)
        self.checkpoints: list[int] = []
        self.started_with: tuple[int, int | None] | None = None

    def started(self, total_steps: int, resumed_from_step: int | None) -> None:
        self.started_with = (total_steps, resumed_from_step)

    def report(self, progress: Progress) -> None:
        self.reports.append(progress)

    def evaluated(self, name: str, metrics: dict[str, float]) -> None:
        self.evals[name] = metrics

    def evaluated_at(self, step: int, epoch: float, metrics: dict[str, float], best_step: int | None) -> None:
        self.curve.append((step, metrics["mrr@10"], best_step))

    def nearest_chunks(self, vectors: np.ndarray, k: int) -> list[list[str]]:
        raise AssertionError("these tests mine from the training passages")

    def checkpointed(self, step: int, path: Path) -> None:
        self.checkpoints.append(step)

    def should_stop(self) -> StopReason | None:
        done = self.reports[-1].step if self.reports else 0
        return self.reason if self.stop_after is not None and done >= self.stop_after else None


@pytest.fixture
def tiny_base(session_services) -> Iterator[tuple[str, Path]]:
    """A tiny BERT registered under EMBEDQ_MODELS_DIR as a base model the resolver finds by name."""
    models_dir = get_settings().models_dir
    assert models_dir is not None
    name = f"tiny-base-{uuid.uuid4().hex[:6]}"
    folder = make_tiny_bert(models_dir / name)
    yield name, folder
    shutil.rmtree(folder, ignore_errors=True)


def make_spec(tmp_path: Path, base: tuple[str, Path], method: str, **hyper: object) -> TrainingSpec:
    pairs = make_pairs(40)
    hyperparams = {
        "seed": 7,
        "batch_size": 8,
        "epochs": 1,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": None,
        **hyper,
    }
    return TrainingSpec(
        job_id=uuid.uuid4(),
        method=method,
        base_model=base[0],
        base_path=base[1],
        train_pairs=pairs[:32],
        eval_pairs=pairs[32:],
        hyperparams=hyperparams,
        checkpoint_dir=tmp_path / "checkpoint",
        output_dir=tmp_path / "output",
        progress_every_steps=1,
        checkpoint_every_steps=100,
    )


def test_batches_never_hold_a_text_twice_and_resume_deterministically() -> None:
    # Six distinct queries over 36 pairs: a naive batch of 8 would repeat queries (false negatives).
    pairs = [Pair(f"query {i % 6}", f"passage {i}", "hard negative" if i % 3 == 0 else None) for i in range(36)]
    plan = plan_batches(pairs, batch_size=8, epochs=2, seed=1)
    assert plan == plan_batches(pairs, batch_size=8, epochs=2, seed=1)
    assert sum(plan.steps_per_epoch) == len(plan.batches)
    assert plan.steps_per_epoch[0] == planned_steps(pairs, 8)
    for _, indices in plan.batches:
        columns = batch_columns(plan.pairs, indices)
        texts = [t for column in columns for t in column]
        assert len(texts) == len(set(texts)), columns
        # Each batch is all-with or all-without hard negatives, so MNRL gets same-width columns.
        assert len({plan.pairs[i].negative is None for i in indices}) == 1
    assert plan.epoch_progress(plan.steps_per_epoch[0]) == 1.0


def test_shutdown_checkpoint_then_resume_ends_with_the_same_weights(tmp_path: Path, tiny_base) -> None:
    straight = make_spec(tmp_path / "straight", tiny_base, "full")
    hooks = RecordingHooks()
    result = train(straight, hooks)
    assert result.stopped is None and result.steps == 4
    assert [p.step for p in hooks.reports] == [1, 2, 3, 4] and hooks.started_with == (4, None)
    assert set(hooks.evals["base"]) >= {"recall@1", "recall@10", "mrr@10"}
    assert set(result.eval["trained"]) >= {"recall@1", "recall@10", "mrr@10"}

    interrupted = make_spec(tmp_path / "interrupted", tiny_base, "full")
    first = RecordingHooks(stop_after=2)
    assert train(interrupted, first).stopped is StopReason.SHUTDOWN
    assert first.checkpoints == [2] and not interrupted.output_dir.exists()
    second = RecordingHooks()
    resumed = train(replace(interrupted, base_eval=first.evals["base"]), second)
    assert second.started_with == (4, 2) and [p.step for p in second.reports] == [3, 4]
    assert "base" not in second.evals  # evaluated once, before the first step
    assert resumed.stopped is None and resumed.steps == 4
    want = load_file(straight.output_dir / "model.safetensors")
    got = load_file(interrupted.output_dir / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


def test_cancel_stops_without_a_model(tmp_path: Path, tiny_base) -> None:
    spec = make_spec(tmp_path, tiny_base, "full")
    result = train(spec, RecordingHooks(stop_after=1, reason=StopReason.CANCELLED))
    assert result.stopped is StopReason.CANCELLED and result.steps == 1
    assert not spec.output_dir.exists()


def test_lora_folder_points_at_its_base_by_name_and_serves_like_peft(tmp_path: Path, tiny_base) -> None:
    spec = make_spec(tmp_path, tiny_base, "lora", learning_rate=5e-2)
    result = train(spec, RecordingHooks())
    assert result.stopped is None and result.dimension == 32
    folder = spec.output_dir
    assert base_model_of(folder) == tiny_base[0]
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    # Move the adapter and break peft's absolute base path: embedq's own pointer still finds the base.
    moved = tmp_path / "moved-alias"
    shutil.move(folder, moved)
    config_file = moved / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "/nowhere/that/exists"
    config_file.write_text(json.dumps(config))

    texts = ["the cat sat", "music and water", "a book about a city"]
    served = Encoder(ResolvedModel("alias", moved, "models_dir")).encode(texts)
    base = Encoder(ResolvedModel(tiny_base[0], tiny_base[1], "models_dir")).encode(texts)
    reference = SentenceTransformer(str(tiny_base[1]), device="cpu")
    reference.load_adapter(str(moved))
    unmerged = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(served, unmerged, atol=1e-5)
    assert not np.allclose(served, base, atol=1e-3)
    assert json.loads((moved / ADAPTER_POINTER).read_text())["base_model"] == tiny_base[0]
