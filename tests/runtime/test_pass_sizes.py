"""Forward-pass bounds per device, and bench/gpu.py's sizing of token budgets for a card (no GPU needed)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel
from app.core.config import Settings
from bench.gpu import (
    Layout,
    Variant,
    activation_bytes_per_token,
    recommend,
    rows_for_budget,
    token_budgets,
)
from workers.runtime.encoder import Encoder
from workers.runtime.pass_sizes import PassSize, pass_size

MINILM = Layout(hidden=384, intermediate=1536, heads=12, max_seq=512)
GIB = 2**30
ROOT = Path(__file__).resolve().parents[2]


def test_cuda_passes_take_the_cuda_bounds_whatever_the_cpu_rows() -> None:
    settings = Settings(cuda_batch_size=640, cuda_batch_tokens=20_000, max_batch_tokens=1024)
    assert pass_size("cuda", settings, cpu_rows=32) == PassSize(640, 20_000)
    assert pass_size("cpu", settings, cpu_rows=8) == PassSize(8, 1024)
    assert pass_size("mps", settings, cpu_rows=32) == PassSize(32, 1024)


def test_a_cpu_encoder_plans_its_passes_with_the_cpu_bounds_unless_told_its_budget(
    tmp_path: Path, settings_env: SettingsEnv
) -> None:
    settings_env.set(EMBEDQ_MAX_BATCH_TOKENS="200", EMBEDQ_CUDA_BATCH_SIZE="999", EMBEDQ_CUDA_BATCH_TOKENS="99999")
    folder = make_tiny_bert(tmp_path / "bert")

    def load(**options: int) -> Encoder:
        model = ResolvedModel(name="tiny", path=folder, source="models_dir", precision="fp32", backend="torch")
        return Encoder(model, batch_size=5, **options)

    planned, fixed = load(), load(batch_tokens=64)
    assert (planned.batch_size, planned.batch_tokens) == (5, 200)
    assert (fixed.batch_size, fixed.batch_tokens) == (5, 64)
    texts = ["a short text", "another somewhat longer text to embed here", "x"] * 4
    np.testing.assert_allclose(planned.encode(texts), fixed.encode(texts), atol=1e-5)


def test_activation_estimate_counts_widths_and_attention_rows() -> None:
    # 6 x 384 + 2 x 1536 + 2 x 12 x 512 values per token
    assert activation_bytes_per_token(MINILM, 2) == 2 * (2304 + 3072 + 12_288)
    assert activation_bytes_per_token(MINILM, 4) == 2 * activation_bytes_per_token(MINILM, 2)


def test_budgets_double_up_to_what_the_share_of_the_card_holds() -> None:
    per_token = activation_bytes_per_token(MINILM, 2)
    budgets = token_budgets(80 * GIB, MINILM, 2, share=0.5, smallest=4096)
    assert budgets[0] == 4096
    assert all(b == 2 * a for a, b in itertools.pairwise(budgets))
    assert budgets[-1] * per_token <= 40 * GIB < 2 * budgets[-1] * per_token
    # fp32 values take twice the bytes: one doubling fewer on the same card.
    assert token_budgets(80 * GIB, MINILM, 4, share=0.5, smallest=4096) == budgets[:-1]


def test_budgets_stop_at_largest_and_refuse_a_card_too_small() -> None:
    assert token_budgets(80 * GIB, MINILM, 2, share=0.5, smallest=4096, largest=20_000) == [4096, 8192, 16_384]
    with pytest.raises(ValueError, match="lower --smallest or raise --share"):
        token_budgets(GIB // 8, MINILM, 4, share=0.5, smallest=4096)
    with pytest.raises(ValueError, match="share"):
        token_budgets(80 * GIB, MINILM, 2, share=0.0, smallest=4096)


def test_rows_bound_fills_a_budget_with_short_inputs() -> None:
    assert rows_for_budget(16_384) == 1024
    assert rows_for_budget(8) == 1


def _variant(precision: str, budget: int | None, rate: float, mean: float = 1.0, least: float = 1.0) -> Variant:
    variant = Variant(f"{precision}@{budget}", precision, budget, lambda texts: np.zeros((len(texts), 1)))
    variant.rates = [rate]
    variant.mean_cosine, variant.min_cosine = mean, least
    return variant


def test_recommend_takes_the_fastest_faithful_precision_at_its_smallest_near_best_budget() -> None:
    variants = [
        _variant("fp16", None, 9000),  # sentence-transformers: never a setting to pick
        _variant("fp32", 4096, 3000),
        _variant("fp16", 4096, 7000),
        _variant("fp16", 8192, 7700),  # within 5% of the best fp16 rate, and smaller
        _variant("fp16", 16_384, 8000),
        _variant("bf16", 16_384, 8500, mean=0.998),  # fastest, but not faithful enough
    ]
    pick = recommend(variants, min_mean=0.999, min_each=0.995)
    assert (pick.precision, pick.budget) == ("fp16", 8192)


def test_recommend_refuses_when_nothing_is_faithful() -> None:
    with pytest.raises(ValueError, match="no precision"):
        recommend([_variant("bf16", 4096, 1.0, mean=0.9)], min_mean=0.999, min_each=0.995)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU host the bench runs instead of refusing")
def test_gpu_bench_without_cuda_exits_2_with_a_message() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "measures a CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr
