"""Speed and fidelity of each precision and backend on the CPU, against sentence-transformers' fp32 torch encode.

    python -m bench.precision [--n 512] [--rounds 3] [--model sentence-transformers/all-MiniLM-L6-v2]

Every variant embeds the same texts; rounds interleave the variants so a busy machine slows all of them alike.
Reported per variant: median texts/s, the median over rounds of (sentence-transformers time / variant time),
and the mean and minimum cosine of its vectors to sentence-transformers' fp32 vectors. ``auto`` measures its
choice afresh (workers/runtime/auto_precision.py). Targets from the issues: int8 >= 2.5x sentence-transformers
with mean cosine >= 0.99; auto >= 3.5x with mean cosine >= 0.999.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from app.catalog.resolver import resolve_model
from app.core.config import get_settings
from bench.corpus import realistic_texts
from workers.runtime.encoder import Encoder
from workers.runtime.smoothing import calibration_texts, input_absmax, smooth_weights

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Variant:
    """One way of embedding the texts, with what it measured."""

    name: str
    encode: Callable[[list[str]], np.ndarray]
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cosines: np.ndarray | None = None


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class _Smoothed(torch.nn.Module):
    """``linear`` fed ``x / s`` (SmoothQuant's inverse scale; None: ``x``)."""

    def __init__(self, linear: torch.nn.Module, inverse_scale: torch.Tensor | None) -> None:
        super().__init__()
        self.linear, self.inverse_scale = linear, inverse_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x if self.inverse_scale is None else x * self.inverse_scale)


class TorchAoInt8Encoder(Encoder):
    """The path ``Int8Linear`` replaced, for reference: the same recipe (per-channel int8 weights, smoothing,
    first layer float32 when smoothed) through ``torch.ao.quantization.quantize_dynamic``, deprecated in torch 2.13."""

    def _quantize_int8(self, model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        inverse: dict[str, torch.Tensor | None] = dict.fromkeys(linears)
        if alpha > 0:
            inverse = dict(smooth_weights(model, input_absmax(model, lambda: self.encode(calibration_texts())), alpha))
        for name, inverse_scale in inverse.items():
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attribute, _Smoothed(getattr(parent, attribute), inverse_scale))
        spec = {f"{name}.linear": per_channel_dynamic_qconfig for name in inverse}
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def _encoder(
    model: str,
    precision: str,
    backend: str,
    onnx_dir: Path,
    *,
    smoothing: float | None = None,
    kind: type[Encoder] = Encoder,
) -> Encoder:
    os.environ["EMBEDQ_ONNX_DIR"] = str(onnx_dir)
    # auto measures afresh here (its decision cached in the bench's temporary folder, not the state dir).
    os.environ["EMBEDQ_PRECISION_CACHE_DIR"] = str(onnx_dir / "precision")
    os.environ["EMBEDQ_PRECISION_AUTO_MEASURE"] = "true"
    os.environ.pop("EMBEDQ_INT8_SMOOTHING", None)
    if smoothing is not None:
        os.environ["EMBEDQ_INT8_SMOOTHING"] = str(smoothing)
    get_settings.cache_clear()
    resolved = resolve_model(model, get_settings())
    return kind(replace(resolved, precision=precision, backend=backend))


def _onnx_recipe(encoder: Encoder, work: Path, *, per_channel: bool) -> Callable[[list[str]], np.ndarray]:
    """Return an encode function running ``encoder`` through ONNX int8 with every layer quantized."""
    from workers.runtime.onnx_backend import OnnxModel, export_fp32, optimize_graph, quantize_int8

    input_names = list(dict.fromkeys(encoder.tokenizer.model_input_names))
    tag = "per-channel" if per_channel else "per-tensor"
    fp32 = export_fp32(encoder.model, input_names, work / f"{tag}-fp32.onnx")
    fp32 = optimize_graph(fp32, work / f"{tag}-opt.onnx", encoder.model)
    runner = OnnxModel(quantize_int8(fp32, work / f"{tag}-int8.onnx", per_channel=per_channel))

    def encode(texts: list[str]) -> np.ndarray:
        saved = encoder.onnx
        encoder.onnx = runner
        try:
            return encoder.encode(texts)
        finally:
            encoder.onnx = saved

    return encode


def build_variants(model: str, work: Path) -> tuple[Variant, list[Variant]]:
    """Return the sentence-transformers baseline and the variants to compare with it."""
    from sentence_transformers import SentenceTransformer

    torch_fp32 = _encoder(model, "fp32", "torch", work)
    baseline_model = SentenceTransformer(str(torch_fp32.path), device="cpu")
    baseline = Variant(
        "sentence-transformers fp32",
        lambda texts: baseline_model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True),
    )
    torch_int8 = _encoder(model, "int8", "torch", work)
    torch_int8_plain = _encoder(model, "int8", "torch", work, smoothing=0)
    ao_int8 = _encoder(model, "int8", "torch", work, kind=TorchAoInt8Encoder)
    ao_int8_plain = _encoder(model, "int8", "torch", work, smoothing=0, kind=TorchAoInt8Encoder)
    torch_bf16 = _encoder(model, "bf16", "torch", work)
    torch_auto = _encoder(model, "auto", "torch", work)
    onnx_fp32 = _encoder(model, "fp32", "onnx", work)
    onnx_int8 = _encoder(model, "int8", "onnx", work)
    variants = [
        Variant("embedq torch fp32", torch_fp32.encode),
        Variant("embedq torch bf16", torch_bf16.encode),
        Variant(f"embedq torch auto [default; measured here: {torch_auto.precision}]", torch_auto.encode),
        Variant("embedq torch int8 [default: per-channel, SmoothQuant alpha 0.8, first layer fp32]", torch_int8.encode),
        Variant("embedq torch int8, no smoothing (EMBEDQ_INT8_SMOOTHING=0)", torch_int8_plain.encode),
        Variant("reference: torch.ao dynamic int8 (deprecated), same recipe as the default int8", ao_int8.encode),
        Variant("reference: torch.ao dynamic int8 (deprecated), no smoothing", ao_int8_plain.encode),
        Variant("embedq onnx fp32 (fused)", onnx_fp32.encode),
        Variant("embedq onnx int8 [default: per-channel, first layer fp32]", onnx_int8.encode),
        Variant("onnx int8, per-channel, every layer", _onnx_recipe(onnx_fp32, work, per_channel=True)),
        Variant("onnx int8, per-tensor, every layer", _onnx_recipe(onnx_fp32, work, per_channel=False)),
    ]
    return baseline, variants


def run(texts: list[str], baseline: Variant, variants: list[Variant], rounds: int) -> None:
    """Time every variant ``rounds`` times, interleaved, and record its fidelity to the baseline."""
    reference = baseline.encode(texts[:64])  # warm-up
    for variant in variants:
        variant.encode(texts[:64])
    reference = baseline.encode(texts)
    for variant in variants:
        variant.cosines = _cosines(variant.encode(texts), reference)
    for round_ in range(rounds):
        started = time.perf_counter()
        baseline.encode(texts)
        base_seconds = time.perf_counter() - started
        baseline.rates.append(len(texts) / base_seconds)
        for variant in variants:
            started = time.perf_counter()
            variant.encode(texts)
            seconds = time.perf_counter() - started
            variant.rates.append(len(texts) / seconds)
            variant.ratios.append(base_seconds / seconds)
        print(f"round {round_ + 1}/{rounds}: baseline {baseline.rates[-1]:.1f} texts/s", flush=True)


def report(baseline: Variant, variants: list[Variant]) -> str:
    """Return a markdown table of the measurements."""
    lines = [
        "| variant | texts/s (median) | × sentence-transformers (median of rounds) | mean cosine | min cosine |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| {baseline.name} | {statistics.median(baseline.rates):.1f} | 1.00 | 1.0000 | 1.0000 |",
    ]
    for v in variants:
        assert v.cosines is not None
        lines.append(
            f"| {v.name} | {statistics.median(v.rates):.1f} | {statistics.median(v.ratios):.2f} "
            f"| {v.cosines.mean():.4f} | {v.cosines.min():.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    texts = realistic_texts(args.n)
    with tempfile.TemporaryDirectory(prefix="embedq-precision-") as work:
        baseline, variants = build_variants(args.model, Path(work))
        run(texts, baseline, variants, args.rounds)
    print(f"\n{args.model}, {len(texts)} texts, {args.rounds} interleaved rounds\n")
    print(report(baseline, variants))
    auto = next(v for v in variants if "auto" in v.name)
    print(f"\nauto: {statistics.median(auto.ratios):.2f}x sentence-transformers, mean cosine {auto.cosines.mean():.4f}")


if __name__ == "__main__":
    main()
