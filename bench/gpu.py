"""Each precision's speed on a CUDA GPU at token budgets sized for the card, against sentence-transformers there.

    python -m bench.gpu [--n 8192] [--rounds 3] [--model sentence-transformers/all-MiniLM-L6-v2] [--share 0.5]

Prints the card (name, memory, torch and CUDA versions), then one row per variant: sentence-transformers at
fp32 and fp16 (its own fixed batches of --st-batch rows), and embedq's Encoder at fp32, fp16 and bf16 (where
the card has it), each at padded-token budgets (EMBEDQ_CUDA_BATCH_TOKENS) from --smallest up to the largest
whose estimated activations fit in --share of the card's free memory, doubling (``token_budgets``). Per row:
texts/s, real tokens/s (the tokens the model read, no padding), the GPU memory its passes took beyond the
resident weights, × (sentence-transformers fp32's time / the row's, median over rounds), and the mean and
minimum cosine to sentence-transformers' fp32 vectors. Rounds interleave every
row, so a card that warms up or throttles moves all of them alike.

Last it prints the pass bounds to run this card and model with: the fastest row that stays faithful to fp32
(EMBEDQ_PRECISION_AUTO_MIN_MEAN_COSINE / _MIN_COSINE), at the smallest budget within 5% of that row's speed
(smaller passes hold less memory and keep sync requests waiting less), as EMBEDQ_CUDA_BATCH_TOKENS and
EMBEDQ_CUDA_BATCH_SIZE (``rows_for_budget``). ``bench/gpu_run.sh`` runs it in one go on a lent GPU machine.

On a machine without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from bench.corpus import realistic_texts

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PRECISIONS = ("fp32", "fp16", "bf16")
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "bf16": 2}
# A pass's rows bound only matters for short inputs: rows_for_budget lets a budget fill with inputs this short.
SHORTEST_TOKENS = 16
WITHIN = 0.05


@dataclass(frozen=True)
class Layout:
    """What sizes a transformer encoder's activations: its widths, heads and longest input."""

    hidden: int
    intermediate: int
    heads: int
    max_seq: int


def activation_bytes_per_token(layout: Layout, bytes_per_value: int) -> int:
    """Return the peak activation bytes one padded token costs in a layer's forward pass, an upper estimate.

    Hidden states in and out, Q, K, V and the attention output (6 x hidden), the feed-forward's intermediate
    and its activation (2 x intermediate), and a row of attention scores and probabilities per head at the
    longest width (2 x heads x max_seq) when the kernel materializes them. Inference keeps one layer's
    activations at a time, so this does not grow with depth.
    """
    values = 6 * layout.hidden + 2 * layout.intermediate + 2 * layout.heads * layout.max_seq
    return values * bytes_per_value


def token_budgets(
    free_bytes: int, layout: Layout, bytes_per_value: int, *, share: float, smallest: int, largest: int | None = None
) -> list[int]:
    """Return padded-token budgets to measure: ``smallest``, doubling, up to the largest whose activations fit
    in ``share`` of ``free_bytes`` (and ``largest`` if given). Raises ValueError if not even ``smallest`` fits."""
    if not 0 < share <= 1:
        raise ValueError(f"share is a fraction of the card's free memory in (0, 1], got {share}")
    per_token = activation_bytes_per_token(layout, bytes_per_value)
    fits = int(free_bytes * share) // per_token
    limit = fits if largest is None else min(fits, largest)
    if limit < smallest:
        raise ValueError(
            f"a pass of {smallest} padded tokens needs about {smallest * per_token / 2**30:.1f} GiB "
            f"of activations; {share:.0%} of the card's free {free_bytes / 2**30:.1f} GiB holds {fits} tokens: "
            "lower --smallest or raise --share"
        )
    budgets = [smallest]
    while budgets[-1] * 2 <= limit:
        budgets.append(budgets[-1] * 2)
    return budgets


def rows_for_budget(budget: int) -> int:
    """Return the rows bound that goes with a token budget: enough rows to fill it with inputs of 16 tokens."""
    return max(1, budget // SHORTEST_TOKENS)


@dataclass
class Variant:
    """One way of embedding the texts on the card, with what it measured."""

    name: str
    precision: str
    budget: int | None
    encode: Callable[[list[str]], np.ndarray]
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    pass_bytes: int = 0
    mean_cosine: float = 1.0
    min_cosine: float = 1.0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def recommend(variants: Sequence[Variant], *, min_mean: float, min_each: float) -> Variant:
    """Return the embedq variant to configure: the fastest faithful one's precision, at its smallest budget
    within 5% of its speed. Raises ValueError if no embedq variant is faithful."""
    faithful = [v for v in variants if v.budget is not None and v.mean_cosine >= min_mean and v.min_cosine >= min_each]
    if not faithful:
        raise ValueError(f"no precision kept mean cosine >= {min_mean} and min >= {min_each} to fp32")
    best = max(faithful, key=lambda v: v.rate)
    close = [v for v in faithful if v.precision == best.precision and v.rate >= (1 - WITHIN) * best.rate]
    return min(close, key=lambda v: v.budget or 0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        reason = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        print(
            f"bench.gpu measures a CUDA GPU, and {reason} (torch {torch.__version__}). Run it on a GPU host with "
            "a CUDA build of torch (pip install 'embedq[worker-gpu]'), e.g. with bench/gpu_run.sh",
            file=sys.stderr,
        )
        sys.exit(2)


def build_variants(args: argparse.Namespace, texts: list[str]) -> tuple[list[Variant], dict[str, int], int]:
    """Return the variants to time (sentence-transformers fp32 first), the budgets each precision got, and the
    tokens the model reads of ``texts``."""
    import torch
    from sentence_transformers import SentenceTransformer

    from app.catalog.resolver import resolve_model
    from app.core.config import get_settings
    from workers.runtime.encoder import Encoder

    device = torch.device("cuda", 0)
    resolved = resolve_model(args.model, get_settings())
    # bf16 only where the card computes it natively (Ampere and later).
    precisions = [p for p in PRECISIONS if p != "bf16" or torch.cuda.is_bf16_supported(including_emulation=False)]
    encoders = {p: Encoder(replace(resolved, precision=p), device=device) for p in precisions}
    st_fp32 = SentenceTransformer(str(encoders["fp32"].path), device="cuda")
    st_fp16 = SentenceTransformer(str(encoders["fp32"].path), device="cuda").half()

    def st(model: SentenceTransformer) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: model.encode(texts, batch_size=args.st_batch, normalize_embeddings=True)

    variants = [
        Variant(f"sentence-transformers fp32 (batch {args.st_batch})", "fp32", None, st(st_fp32)),
        Variant(f"sentence-transformers fp16 (batch {args.st_batch})", "fp16", None, st(st_fp16)),
    ]
    config = encoders["fp32"].model.config.get_text_config()
    layout = Layout(
        hidden=int(config.hidden_size),
        intermediate=int(getattr(config, "intermediate_size", 4 * config.hidden_size)),
        heads=int(config.num_attention_heads),
        max_seq=encoders["fp32"].max_seq_length,
    )
    free, _ = torch.cuda.mem_get_info(device)
    counts: dict[str, int] = {}
    for precision, encoder in encoders.items():
        budgets = token_budgets(
            free, layout, BYTES_PER_VALUE[precision], share=args.share, smallest=args.smallest, largest=args.largest
        )
        counts[precision] = len(budgets)
        for budget in budgets:
            variants.append(Variant(f"embedq {precision}", precision, budget, _encoder_at(encoder, budget)))
    return variants, counts, sum(encoders["fp32"].count_tokens(texts))


def _encoder_at(encoder: Encoder, budget: int) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        encoder.batch_tokens = budget
        return encoder.encode(texts, batch_size=rows_for_budget(budget))

    return encode


def run(texts: list[str], variants: list[Variant], rounds: int) -> None:
    """Time every variant ``rounds`` times, interleaved, recording its passes' memory and fidelity to the first."""
    import torch

    reference = variants[0].encode(texts)
    for variant in variants:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
        cosines = _cosines(variant.encode(texts), reference)
        variant.pass_bytes = torch.cuda.max_memory_allocated() - resident
        variant.mean_cosine, variant.min_cosine = float(cosines.mean()), float(cosines.min())
    for round_ in range(rounds):
        seconds = []
        for variant in variants:
            torch.cuda.synchronize()
            started = time.perf_counter()
            variant.encode(texts)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
            variant.rates.append(len(texts) / seconds[-1])
            variant.ratios.append(seconds[0] / seconds[-1])
        print(
            f"round {round_ + 1}/{rounds}: sentence-transformers fp32 {variants[0].rates[-1]:.0f} texts/s", flush=True
        )


def report(variants: list[Variant], tokens: int, n: int) -> str:
    """Return a markdown table of the measurements."""
    lines = [
        "| variant | budget (padded tokens) | texts/s | tokens/s | pass GiB | × ST fp32 | mean cosine | min cosine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in variants:
        budget = f"{v.budget:,}" if v.budget is not None else "-"
        lines.append(
            f"| {v.name} | {budget} | {v.rate:,.0f} | {v.rate * tokens / n:,.0f} | {v.pass_bytes / 2**30:.2f} "
            f"| {statistics.median(v.ratios):.2f} | {v.mean_cosine:.4f} | {v.min_cosine:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192, help="texts embedded by every variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--st-batch", type=int, default=128, help="sentence-transformers' batch size")
    parser.add_argument("--share", type=float, default=0.5, help="share of the card's free memory a pass may fill")
    parser.add_argument("--smallest", type=int, default=4096, help="the smallest token budget measured")
    parser.add_argument("--largest", type=int, default=None, help="the largest token budget measured")
    args = parser.parse_args()
    _require_cuda()

    import torch

    from app.core.config import get_settings

    card = torch.cuda.get_device_properties(0)
    print(
        f"card: {card.name}, {card.total_memory / 2**30:.1f} GiB, compute capability {card.major}.{card.minor}; "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    texts = realistic_texts(args.n)
    variants, counts, tokens = build_variants(args, texts)
    print(f"{args.model}, {len(texts)} texts; budgets per precision: {counts}", flush=True)
    run(texts, variants, args.rounds)
    print(f"\n{args.model} on {card.name}: {len(texts)} texts, {tokens:,} tokens, {args.rounds} interleaved rounds\n")
    print(report(variants, tokens, len(texts)))
    settings = get_settings()
    pick = recommend(
        variants, min_mean=settings.precision_auto_min_mean_cosine, min_each=settings.precision_auto_min_cosine
    )
    assert pick.budget is not None
    print(
        f"\nfastest faithful: {pick.name} at {pick.budget:,} padded tokens, {pick.rate:,.0f} texts/s = "
        f"{statistics.median(pick.ratios):.2f}x sentence-transformers fp32"
    )
    print(
        f"for this card: EMBEDQ_CUDA_BATCH_TOKENS={pick.budget} EMBEDQ_CUDA_BATCH_SIZE={rows_for_budget(pick.budget)}"
    )


if __name__ == "__main__":
    main()
