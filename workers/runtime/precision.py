"""Numeric precision of a loaded model: which one ``auto`` means here, and how each is applied to a torch model.

``fp32``/``fp16``/``bf16`` load the weights in that dtype. ``int8`` on the CPU is dynamic int8 of the Linear layers
(weights int8 per output channel, activations quantized on the fly: ``workers/runtime/int8_linear.py``, smoothed
by ``workers/runtime/smoothing.py``); on CUDA ``int8`` and ``int4`` are bitsandbytes' 8-bit and NF4 formats.
Pooling and normalization always run in float32. What ``auto`` becomes is measured (``auto_precision.py``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from app.core.config import PrecisionSetting

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,
    "int4": torch.float16,
}


class PrecisionUnavailableError(RuntimeError):
    """A precision this device (or this install) cannot run."""


def resolve_precision(
    requested: PrecisionSetting, device: torch.device, *, enable_quantization: bool = False
) -> Precision:
    """Return the concrete precision for ``requested`` on ``device``, or raise if this host cannot run it.

    ``auto`` is fp16 on CUDA and fp32 elsewhere; with EMBEDQ_ENABLE_QUANTIZATION it is int8 on the CPU.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "int8" if enable_quantization and device.type == "cpu" else "fp32"
    if requested == "int4" and device.type != "cuda":
        raise PrecisionUnavailableError(
            f"precision int4 needs bitsandbytes on a CUDA GPU, but this model runs on {device}: use int8 "
            "(dynamic quantization on the CPU), fp32, or the ONNX backend (backend: onnx) here"
        )
    if requested == "int8" and device.type not in ("cpu", "cuda"):
        raise PrecisionUnavailableError(
            f"precision int8 runs on the CPU (dynamic quantization) or CUDA (bitsandbytes), not on {device}: "
            "use fp16 or fp32 there"
        )
    if requested == "fp16" and device.type == "cpu":
        logger.warning("precision fp16 on the CPU is slow and loses digits: fp32 or int8 suit a CPU better")
    return requested


def load_dtype(precision: Precision) -> torch.dtype:
    """Return the dtype to load the weights in for ``precision``."""
    return _DTYPES[precision]


def bitsandbytes_kwargs(precision: Precision, device: torch.device) -> dict[str, Any] | None:
    """Return ``from_pretrained`` kwargs for a bitsandbytes precision on CUDA, or None when it is not one."""
    if device.type != "cuda" or precision not in ("int8", "int4"):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PrecisionUnavailableError(
            f"precision {precision} on CUDA needs the bitsandbytes package: pip install bitsandbytes, or use fp16"
        )
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def load_quantized(transformer_dir: Path, precision: Precision, device: torch.device) -> torch.nn.Module:
    """Return the model of ``transformer_dir`` loaded by bitsandbytes at ``precision`` on the CUDA ``device``."""
    from transformers import AutoModel

    kwargs = bitsandbytes_kwargs(precision, device)
    assert kwargs is not None, "load_quantized is for bitsandbytes precisions on CUDA"
    return AutoModel.from_pretrained(transformer_dir, local_files_only=True, **kwargs)


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Return ``model`` with every Linear layer dynamically quantized to int8, per output channel (CPU only).

    Per-channel weights keep noticeably more of the fp32 geometry than one scale per tensor does; the
    embeddings and LayerNorms stay float32.
    """
    from workers.runtime.int8_linear import quantize_linears

    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    return quantize_linears(model, linears)
