"""Dynamic int8 Linear layers on the CPU through oneDNN's int8 GEMM, without ``torch.ao.quantization``.

``torch.ao.quantization.quantize_dynamic`` and the quantized tensors under it are deprecated in torch 2.13
(see docs/development.md). ``Int8Linear`` does the same arithmetic with plain int8/uint8 tensors: the weight
is quantized once, symmetric int8 with one scale per output channel (to +-127 where the CPU has VNNI or
AMX, +-63 elsewhere: ``weight_levels()``); each call quantizes its input to uint8 with one scale and zero
point for the whole tensor, from its own min and max; ``torch.ops.onednn.
qlinear_pointwise`` (the kernel Inductor's x86 int8 path lowers to) multiplies them in int8 and returns
float32 with the scales and bias applied in the same pass. An optional per-input-channel ``inverse_scale``
(SmoothQuant's ``1 / s``, ``workers/runtime/smoothing.py``) multiplies the input first.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import torch

from workers.runtime.device import cpu_flags
from workers.runtime.precision import PrecisionUnavailableError

# CPUs whose u8 x s8 dot product sums straight into int32.
_INT8_DOT_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def check_int8_cpu() -> None:
    """Raise unless this torch build has oneDNN's int8 Linear kernels (x86 builds do)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise PrecisionUnavailableError(
            "precision int8 on the CPU needs a torch build with oneDNN (the x86 wheels from pytorch.org have it): "
            "use bf16 or fp32 here, or the ONNX backend's int8 (backend: onnx)"
        )


@cache
def weight_levels() -> int:
    """Return the largest magnitude a weight is quantized to: 127 on a CPU with VNNI or AMX, else 63.

    Without them (AVX2, AVX512 before VNNI) oneDNN multiplies uint8 by int8 with ``vpmaddubsw``, which adds
    each pair of products in saturating int16: 255 x 127 x 2 overflows it (seen: a Linear's output at cosine
    0.97 to fp32 on an AVX2 EPYC), 255 x 63 x 2 does not. Of the two 7-bit choices this one keeps the inputs'
    8 bits (PyTorch's ``reduce_range`` takes the bit from the inputs instead): the inputs share one scale per
    tensor, the weights have one per output channel, so the weights lose less (MiniLM's mean cosine to fp32
    on 120 mixed texts there: 0.994 this way, 0.989 with 7-bit inputs).
    """
    return 127 if any(flag in cpu_flags() for flag in _INT8_DOT_CPU_FLAGS) else 63


class Int8Linear(torch.nn.Module):
    """``linear`` with int8 weights (per output channel) and inputs quantized per call (per tensor)."""

    def __init__(self, linear: torch.nn.Linear, inverse_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.levels = weight_levels()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / self.levels
        qweight = torch.round(weight / scale[:, None]).clamp(-self.levels, self.levels).to(torch.int8)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(self.out_features, dtype=torch.int64))
        # oneDNN's own blocked layout: an opaque tensor, kept out of the state dict.
        self.packed_weight = torch.ops.onednn.qlinear_prepack(qweight, None)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self.register_buffer("inverse_scale", inverse_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if self.inverse_scale is not None:
            rows = rows * self.inverse_scale
        low, high = torch.aminmax(rows)
        # The range always holds 0, so zero (padding, ReLU) is exact; a constant input still gets a scale.
        scale = ((high.clamp(min=0) - low.clamp(max=0)) / 255).clamp(min=1e-8)
        zero_point = torch.round(-low.clamp(max=0) / scale)
        quantized = torch.addcmul(zero_point, rows, 1 / scale).round_().clamp_(0, 255).to(torch.uint8)
        out = torch.ops.onednn.qlinear_pointwise.tensor(
            quantized,
            scale,
            zero_point.to(torch.int64),
            self.packed_weight,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        smoothed = ", smoothed" if self.inverse_scale is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{smoothed}"


def quantize_linears(
    model: torch.nn.Module, names: Iterable[str], inverse_scales: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Replace the Linear layers ``names`` of ``model`` by Int8Linear, in place; return ``model``."""
    check_int8_cpu()
    scales = inverse_scales or {}
    with torch.no_grad():
        for name in list(names):
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attribute, Int8Linear(getattr(parent, attribute), scales.get(name)))
    return model
