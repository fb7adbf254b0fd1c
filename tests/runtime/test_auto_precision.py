"""Precision ``auto`` chooses by measurement: the decision logic with a fake clock, the cache, and real fidelity.

Speed is never asserted: times come from a fake clock wherever a decision depends on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert

from app.catalog.loads import ModelLoad
from app.catalog.resolver import ResolvedModel
from app.catalog.service import describe
from app.core.config import Settings, get_settings
from workers.runtime import auto_precision
from workers.runtime.auto_precision import Measurement, candidates, choose, decide, read_decision
from workers.runtime.device import cpu_flags
from workers.runtime.encoder import Encoder
from workers.runtime.smoothing import calibration_texts

CPU = torch.device("cpu")
BF16_CPU = "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fake_clock(durations: list[float]) -> Iterator[float]:
    """Yield start and end times so that the n-th timed encode lasts ``durations[n]``."""
    now = 0.0
    for seconds in durations:
        yield now
        now += seconds
        yield now


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def cache_dir(tmp_path: Path, settings_env: SettingsEnv) -> Path:
    folder = tmp_path / "precision"
    settings_env.set(EMBEDQ_PRECISION_AUTO_MEASURE="true", EMBEDQ_PRECISION_CACHE_DIR=str(folder))
    return folder


def weight_dtype(encoder: Encoder) -> torch.dtype:
    model = encoder.model.base.model if hasattr(encoder.model, "base") else encoder.model
    return next(model.parameters()).dtype


def auto(path: Path, precision: str = "auto") -> ResolvedModel:
    return ResolvedModel(name="tiny", path=path, source="models_dir", precision=precision, backend="torch")


# The decision logic.


def test_the_fastest_faithful_precision_wins_and_a_faster_unfaithful_one_is_refused() -> None:
    fp32 = Measurement("fp32", 1.0, 1.0, 1.0)
    bf16 = Measurement("bf16", 0.4, 0.9999, 0.998)
    sloppy = Measurement("fp16", 0.2, 0.9995, 0.990)

    assert choose([fp32, bf16], min_mean=0.999, min_each=0.995)[0] == "bf16"
    precision, reason = choose([fp32, bf16, sloppy], min_mean=0.999, min_each=0.995)
    assert precision == "bf16"
    assert "fp16 refused for fidelity" in reason and "bf16 0.400s" in reason and "min 0.99800" in reason
    assert choose([fp32, bf16], min_mean=0.99995, min_each=0.995)[0] == "fp32", "the mean bar counts"
    assert choose([fp32, Measurement("bf16", 2.0, 1.0, 1.0)], min_mean=0.999, min_each=0.995)[0] == "fp32"


def test_with_no_faithful_candidate_auto_falls_back_to_fp32() -> None:
    precision, reason = choose([Measurement("fp16", 0.1, 0.98, 0.9)], min_mean=0.999, min_each=0.995)
    assert precision == "fp32" and "no candidate kept the fp32 vectors" in reason


def test_candidates_follow_the_cpus_bf16_instructions() -> None:
    assert candidates(CPU, flags={"avx2", "avx512f"}) == ["fp32"]
    assert candidates(CPU, flags={"avx512f", "avx512_bf16"}) == ["fp32", "bf16"]
    assert candidates(CPU, flags={"amx_bf16", "amx_tile"}) == ["fp32", "bf16"]
    assert candidates(torch.device("mps")) == ["fp32"]


def test_measured_decision_follows_the_clock_and_the_real_cosines(tiny: Path, cache_dir: Path) -> None:
    encoder = Encoder(auto(tiny, "fp32"))
    texts = calibration_texts()[:24]

    def run(fp32_seconds: float, bf16_seconds: float, min_mean: float) -> auto_precision.Decision:
        clock = fake_clock([fp32_seconds, fp32_seconds, bf16_seconds, bf16_seconds])
        return decide(
            ["fp32", "bf16"],
            encoder._encoding_at(tiny),
            texts,
            device=CPU,
            min_mean=min_mean,
            min_each=0.9,
            clock=lambda: next(clock),
        )

    fast_bf16 = run(1.0, 0.25, min_mean=0.99)
    assert fast_bf16.precision == "bf16"
    assert [(m.precision, m.seconds) for m in fast_bf16.measurements] == [("fp32", 1.0), ("bf16", 0.25)]
    fp32, bf16 = fast_bf16.measurements
    assert fp32.min_cosine > 0.99999, "fp32 is its own reference"
    assert 0.99 <= bf16.mean_cosine < 0.999999, "bf16 really runs in bf16, measured against fp32"

    assert run(0.5, 0.75, min_mean=0.99).precision == "fp32", "a slower bf16 loses"
    assert run(1.0, 0.25, min_mean=1.0).precision == "fp32", "an unfaithful bf16 loses however fast"
    assert encoder.precision == "fp32" and weight_dtype(encoder) == torch.float32, "measuring leaves it as it was"


# The Encoder: measured once, cached, reported; an explicit precision wins.


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bf16 instructions: auto has nothing to measure")
def test_auto_measures_once_caches_and_loads_the_chosen_precision_faithfully(
    tiny: Path, cache_dir: Path, settings_env: SettingsEnv
) -> None:
    first = Encoder(auto(tiny))
    files = list(cache_dir.glob("*.json"))
    assert len(files) == 1
    decision = read_decision(files[0])
    assert decision is not None and decision.precision == first.precision
    assert {m.precision for m in decision.measurements} == {"fp32", "bf16"}
    assert first.precision_reason.startswith(f"auto: {first.precision}") and "decided" in first.precision_reason
    assert weight_dtype(first) == {"fp32": torch.float32, "bf16": torch.bfloat16}[first.precision]

    reference = Encoder(auto(tiny, "fp32")).encode(calibration_texts())
    similarity = cosines(first.encode(calibration_texts()), reference)
    settings = get_settings()
    assert similarity.mean() >= settings.precision_auto_min_mean_cosine
    assert similarity.min() >= settings.precision_auto_min_cosine

    # A cached decision is read, not measured again: here one that says bf16, whatever was measured.
    raw = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({**raw, "precision": "bf16", "reason": "auto: bf16 (written by the test)"}))
    second = Encoder(auto(tiny))
    assert second.precision == "bf16" and weight_dtype(second) == torch.bfloat16
    assert second.precision_reason.startswith("auto: bf16 (written by the test)")


def test_an_explicit_precision_is_never_measured(tiny: Path, cache_dir: Path) -> None:
    encoder = Encoder(auto(tiny, "fp32"))
    assert encoder.precision == "fp32" and "explicit precision" in encoder.precision_reason
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_auto_without_measuring_says_so(tiny: Path, cache_dir: Path, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_PRECISION_AUTO_MEASURE="false")
    encoder = Encoder(auto(tiny))
    assert encoder.precision == "fp32" and "EMBEDQ_PRECISION_AUTO_MEASURE is off" in encoder.precision_reason
    assert not cache_dir.exists()


def test_models_endpoint_reports_the_precision_and_why(tiny: Path) -> None:
    resolved = auto(tiny)
    load = ModelLoad(
        worker="host:1",
        settings="auto|torch|",
        name="tiny",
        family="generic",
        dimension=32,
        max_seq_length=64,
        precision="bf16",
        backend="torch",
        device="cpu",
        pooling="mean",
        normalize=True,
        hybrid=False,
        path=str(tiny),
        source="models_dir",
        load_seconds=1.0,
        loaded_at="2026-12-06T00:00:00+00:00",
        precision_reason="auto: bf16, the fastest faithful to fp32",
    )
    model = describe("tiny", resolved, Settings(), {"tiny": [load]})
    assert model.precision == "bf16" and model.precision_reason == "auto: bf16, the fastest faithful to fp32"
    assert model.loads[0].precision_reason == load.precision_reason
    assert describe("tiny", resolved, Settings(), {}).precision_reason is None
