"""What precision ``auto`` becomes: the fastest candidate faithful to fp32, measured once per model and hardware.

At a model's first load on this hardware the worker encodes a fixed calibration set (``calibration_texts()``, the
SmoothQuant set: prose, code, logs, numbers, eight languages, 1 to 32 sentences) with each candidate precision:
fp32 and bf16 on a CPU with bf16 instructions (AVX512-BF16 or AMX), fp16 and bf16 on a CUDA GPU that has bf16.
Each candidate's vectors are compared with fp32's (cosine per text) and its encode is timed (best of a few runs
after a warm-up). The fastest candidate whose mean and minimum cosine reach EMBEDQ_PRECISION_AUTO_MIN_MEAN_COSINE
and EMBEDQ_PRECISION_AUTO_MIN_COSINE wins; when none does, fp32. The decision, with its figures, is written to
EMBEDQ_PRECISION_CACHE_DIR as one JSON file per (model weights, device, backend, hardware, torch), so later loads
read it instead of measuring. Elsewhere (no bf16 CPU, MPS, the ONNX backend) there is nothing to choose between.

The worker publishes the decision in its model load record (``app.catalog.loads``), which ``GET /v1/models``
already reads: the API never imports torch and may run on another host than the cache's disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from workers.runtime.device import cpu_flags, cpu_name
from workers.runtime.precision import Precision

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
EncodeWith = Callable[[Precision], Callable[[list[str]], np.ndarray]]
"""Given a precision, return a function embedding texts with the model at that precision."""

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Measurement:
    """One candidate precision on the calibration texts: its speed and its cosines to fp32."""

    precision: str
    seconds: float
    mean_cosine: float
    min_cosine: float


@dataclass(frozen=True)
class Decision:
    """What ``auto`` became for one model on one piece of hardware, and why."""

    precision: Precision
    reason: str
    hardware: str
    measurements: list[Measurement]
    decided_at: str


def candidates(device: torch.device, flags: set[str] | None = None) -> list[Precision]:
    """Return the precisions ``auto`` chooses between on ``device``, the default first."""
    if device.type == "cuda":
        return ["fp16", "bf16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    if device.type == "cpu":
        has_bf16 = any(flag in (cpu_flags() if flags is None else flags) for flag in _BF16_CPU_FLAGS)
        return ["fp32", "bf16"] if has_bf16 else ["fp32"]
    return ["fp32"]


def hardware(device: torch.device) -> str:
    """Return what the speed of a precision depends on here: the chip, its bf16 flags, threads, torch."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        bf16 = [flag for flag in _BF16_CPU_FLAGS if flag in cpu_flags()]
        chip = f"{cpu_name()} [{' '.join(bf16) or 'no bf16'}] x{torch.get_num_threads()} threads"
    return f"{device.type}: {chip}, torch {torch.__version__}"


def decision_file(
    cache_dir: Path, model_dir: Path, weights: Sequence[Path], device: torch.device, backend: str
) -> Path:
    """Return the cache file of one decision: keyed by the weights (path, size, mtime), device, backend, hardware."""
    stats = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights if p.is_file()]
    key = json.dumps([str(model_dir), stats, str(device), backend, hardware(device)])
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def read_decision(path: Path) -> Decision | None:
    """Return the decision cached at ``path``, or None when there is none or it cannot be read."""
    try:
        raw = json.loads(path.read_text())
        return Decision(**{**raw, "measurements": [Measurement(**m) for m in raw["measurements"]]})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("ignoring the unreadable precision decision %s (%s): measuring again", path, exc)
        return None


def write_decision(path: Path, decision: Decision) -> None:
    """Write ``decision`` to ``path`` atomically; a cache that cannot be written is logged, never fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(decision), indent=2) + "\n")
        partial.replace(path)
    except OSError as exc:
        logger.warning("could not cache the precision decision in %s (%s): the next load measures again", path, exc)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-12)


def measure(
    options: Sequence[Precision],
    encode_with: EncodeWith,
    texts: list[str],
    *,
    clock: Clock,
    repeats: int = 2,
) -> list[Measurement]:
    """Return each option's best time over ``repeats`` encodes of ``texts`` and its cosines to fp32's vectors."""
    reference = encode_with("fp32")(texts)  # also fp32's warm-up
    measurements = []
    for precision in options:
        encode = encode_with(precision)
        # The first pass of another precision is its warm-up (it picks kernels), and gives its vectors.
        vectors = reference if precision == "fp32" else encode(texts)
        best = float("inf")
        for _ in range(repeats):
            started = clock()
            encode(texts)
            best = min(best, clock() - started)
        similarity = _cosines(vectors, reference)
        measurements.append(Measurement(precision, best, float(similarity.mean()), float(similarity.min())))
    return measurements


def choose(measurements: Sequence[Measurement], *, min_mean: float, min_each: float) -> tuple[Precision, str]:
    """Return the fastest faithful precision (fp32 when none is) and why, in words."""
    faithful = [m for m in measurements if m.mean_cosine >= min_mean and m.min_cosine >= min_each]
    figures = ", ".join(
        f"{m.precision} {m.seconds:.3f}s (cosine to fp32 mean {m.mean_cosine:.5f}, min {m.min_cosine:.5f})"
        for m in measurements
    )
    bar = f"mean >= {min_mean}, min >= {min_each}"
    if not faithful:
        return "fp32", f"auto: fp32, as no candidate kept the fp32 vectors ({bar}): {figures}"
    best = min(faithful, key=lambda m: m.seconds)
    unfaithful = [m.precision for m in measurements if m not in faithful]
    refused = f"; {', '.join(unfaithful)} refused for fidelity" if unfaithful else ""
    return best.precision, f"auto: {best.precision}, the fastest faithful to fp32 ({bar}){refused}: {figures}"  # type: ignore[return-value]


def decide(
    options: Sequence[Precision],
    encode_with: EncodeWith,
    texts: list[str],
    *,
    device: torch.device,
    min_mean: float,
    min_each: float,
    clock: Clock,
) -> Decision:
    """Return the decision for ``options``, measured now."""
    measurements = measure(options, encode_with, texts, clock=clock)
    precision, reason = choose(measurements, min_mean=min_mean, min_each=min_each)
    return Decision(precision, reason, hardware(device), measurements, datetime.now(UTC).isoformat(timespec="seconds"))
