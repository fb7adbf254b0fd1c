"""The ONNX Runtime backend: a model folder exported to ONNX once, optionally int8-quantized, run on the CPU.

optimum's exporter (optimum-onnx) pins transformers < 4.58, so it cannot be installed next to transformers 5:
the export is ``torch.onnx.export`` of the loaded model (its last hidden state), the graph is fused with
onnxruntime's transformer optimizer, and ``int8`` is onnxruntime's dynamic quantization of the MatMul weights,
per output channel, except those of the first transformer layer: its error would pass through every later
layer (on MiniLM, keeping it float32 lifts mean cosine to fp32 from 0.989 to 0.992 on mixed texts; per-tensor
scales give 0.94; bench/precision.py measures speed and fidelity). Exports are cached under EMBEDQ_ONNX_DIR
by a key of the folder's weights, the precision and the library versions, so a worker pays for an export once
per model. Needs ``pip install 'embedq[onnx]'``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

OnnxPrecision = Literal["fp32", "int8"]

# Bump when the export or quantization recipe changes, so cached exports made the old way are not reused.
_RECIPE = "embedq-onnx-4"
# MatMuls of the first transformer layer (Hugging Face names: encoder/layer.0/, layers.0/): kept in float32.
_FIRST_LAYER = re.compile(r"layers?\.0/")
_OPSET = 17
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class OnnxUnavailableError(RuntimeError):
    """The ONNX backend was asked for, but onnxruntime (or onnx) is not installed, or cannot run this precision."""


def check_onnx_precision(precision: str) -> OnnxPrecision:
    """Return ``precision`` if the ONNX backend runs it (fp32, int8), else raise saying what it runs."""
    if precision not in ("fp32", "int8"):
        raise OnnxUnavailableError(
            f"the ONNX backend runs fp32 or int8 on the CPU, not {precision}: set precision fp32, int8 or auto, "
            "or use backend torch for fp16/bf16/int4"
        )
    return precision  # type: ignore[return-value]


def require_onnxruntime() -> None:
    """Raise OnnxUnavailableError with the install command when onnxruntime or onnx is missing."""
    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxUnavailableError(
            f"the ONNX backend needs {' and '.join(missing)}: pip install 'embedq[onnx]', or use backend torch"
        )


class OnnxModel:
    """An ONNX Runtime session computing last hidden states [batch, seq, hidden] from collated torch inputs."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the last hidden states for ``batch`` (int64 tensors by input name) as a float32 CPU tensor."""
        feeds = {name: batch[name].cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return torch.from_numpy(hidden)


def prepare_onnx(
    model: torch.nn.Module,
    model_dir: Path,
    input_names: list[str],
    precision: OnnxPrecision,
    onnx_dir: Path,
    *,
    per_channel: bool = True,
    optimize: bool = True,
) -> Path:
    """Return the path of ``model``'s ONNX export at ``precision``, exporting it now unless the cache has it."""
    require_onnxruntime()
    key = _cache_key(model_dir, input_names, precision, per_channel, optimize)
    target = onnx_dir / key / "model.onnx"
    if target.is_file():
        return target
    onnx_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename it into place: two workers exporting at once both succeed.
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=onnx_dir))
    try:
        fp32 = export_fp32(model, input_names, work / "export.onnx")
        if optimize:
            fp32 = optimize_graph(fp32, work / "optimized.onnx", model)
        final = fp32
        if precision == "int8":
            final = quantize_int8(
                fp32, work / "model.onnx", per_channel=per_channel, nodes_to_exclude=first_layer(fp32)
            )
        if final.name != "model.onnx":
            final.rename(work / "model.onnx")
        for leftover in work.iterdir():
            if leftover.name not in ("model.onnx", "model.onnx.data"):
                leftover.unlink()
        (work / "embedq.json").write_text(json.dumps({"source": str(model_dir), "precision": precision}) + "\n")
        try:
            os.rename(work, target.parent)
        except OSError:  # another process got there first; its export is as good as ours
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %s to ONNX (%s) at %s", model_dir, precision, target)
    return target


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).last_hidden_state


def export_fp32(model: torch.nn.Module, input_names: list[str], path: Path) -> Path:
    """Return ``path`` holding ``model`` exported to ONNX with dynamic batch and sequence axes."""
    example = {name: torch.ones((2, 8), dtype=torch.int64) for name in input_names}
    if "token_type_ids" in example:
        example["token_type_ids"] = torch.zeros((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, "last_hidden_state"]}
    with torch.no_grad():
        # The TorchScript exporter (dynamo=False) handles every Hugging Face encoder without onnxscript.
        torch.onnx.export(
            _LastHiddenState(model.float().eval(), input_names),
            tuple(example[name] for name in input_names),
            str(path),
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )
    return path


def optimize_graph(path: Path, target: Path, model: torch.nn.Module) -> Path:
    """Return the graph with attention, LayerNorm and GELU fused by onnxruntime, or ``path`` if it cannot fuse it."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = getattr(model, "config", None)
    try:
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        )
        optimized.save_model_to_file(str(target))
    except Exception:  # fusion is a speed-up only; an architecture it does not know runs unfused
        logger.warning("onnxruntime could not fuse %s; running it unfused", path, exc_info=True)
        return path
    return target


def first_layer(path: Path) -> list[str]:
    """Return the names of the first transformer layer's MatMul nodes in the ONNX graph at ``path``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "MatMul" and _FIRST_LAYER.search(node.name)]


def quantize_int8(
    path: Path, target: Path, *, per_channel: bool = True, nodes_to_exclude: list[str] | None = None
) -> Path:
    """Return ``target`` holding ``path`` with its MatMul weights quantized to int8 (activations dynamically)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(path),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # MatMuls only: a fused Attention node stays float32 (quantizing it costs more fidelity than it saves).
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=nodes_to_exclude or [],
        # Fused nodes (com.microsoft domain) defeat ONNX shape inference; their outputs are float32.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return target


def _cache_key(model_dir: Path, input_names: list[str], precision: str, per_channel: bool, optimize: bool) -> str:
    import onnxruntime

    weights = sorted(
        (str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    material = json.dumps(
        [_RECIPE, str(model_dir.resolve()), weights, input_names, precision, per_channel, optimize,
         torch.__version__, onnxruntime.__version__]
    )  # fmt: skip
    label = re.sub(r"[^A-Za-z0-9._-]", "_", model_dir.name)[:60]
    return f"{label}-{precision}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"
