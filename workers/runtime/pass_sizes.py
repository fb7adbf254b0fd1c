"""How large one forward pass may be on a device: rows and padded tokens (no torch here).

On a CPU small passes of length-sorted inputs are fastest (``workers/runtime/batching.py`` says why):
EMBEDQ_MAX_BATCH_TOKENS padded tokens, and EMBEDQ_ENCODE_BATCH_SIZE rows for jobs or EMBEDQ_MAX_BATCH_SIZE
for sync requests; bf16 as well as fp32 (larger bf16 passes were measured slower through the sync path, whose
pools are small). A GPU is fastest with passes many times larger, so on CUDA every pass takes
EMBEDQ_CUDA_BATCH_SIZE and EMBEDQ_CUDA_BATCH_TOKENS, whatever the caller's CPU row count.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.config import Settings


@dataclass(frozen=True)
class PassSize:
    """The bounds of one forward pass: at most ``rows`` inputs and ``tokens`` padded tokens."""

    rows: int
    tokens: int


def pass_size(device_type: str, settings: Settings, *, cpu_rows: int) -> PassSize:
    """Return the pass bounds on ``device_type`` ("cpu", "cuda", "mps"): the CUDA settings on CUDA, else
    ``cpu_rows`` rows and EMBEDQ_MAX_BATCH_TOKENS tokens."""
    if device_type == "cuda":
        return PassSize(settings.cuda_batch_size, settings.cuda_batch_tokens)
    return PassSize(cpu_rows, settings.max_batch_tokens)


@dataclass(frozen=True)
class PackedSize:
    """The bounds of a packed pass (``workers/runtime/packed.py``): attention groups and real tokens per pass."""

    group_rows: int
    group_tokens: int
    pass_tokens: int


def packed_size(device_type: str, settings: Settings) -> PackedSize | None:
    """Return the packed-pass bounds on ``device_type``, or None where passes stay padded (not a CPU, or
    EMBEDQ_PACKED_PASSES off): a GPU runs large padded passes faster than many small attention calls."""
    if device_type != "cpu" or not settings.packed_passes:
        return None
    return PackedSize(settings.attention_group_rows, settings.attention_group_tokens, settings.packed_pass_tokens)
