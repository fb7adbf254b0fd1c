"""Precision (auto/fp32/fp16/bf16/int8/int4) and the ONNX Runtime backend: what runs where, and how faithfully.

Fidelity is cosine similarity to the fp32 vectors of the same texts; speed is never asserted (bench/precision.py
measures it). Exports go to a temporary EMBEDQ_ONNX_DIR.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from support.settings import SettingsEnv
from support.texts import mixed_texts
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel, resolve_model
from app.core.config import DEFAULT_MODEL, get_settings
from workers.runtime import int8_linear
from workers.runtime.encoder import Encoder
from workers.runtime.int8_linear import Int8Linear
from workers.runtime.onnx_backend import OnnxUnavailableError, require_onnxruntime
from workers.runtime.precision import PrecisionUnavailableError, bitsandbytes_kwargs, resolve_precision
from workers.runtime.smoothing import smoothing_scale

TEXTS = ["hello world", "the cat sat on the mat", "machine learning data " * 20, "a", "Dog, river; 42!"]
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(autouse=True)
def onnx_dir(tmp_path: Path, settings_env: SettingsEnv) -> Path:
    folder = tmp_path / "onnx"
    settings_env.set(EMBEDQ_ONNX_DIR=str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


def at(path: Path, precision: str, backend: str = "torch") -> ResolvedModel:
    return ResolvedModel(name="tiny", path=path, source="models_dir", precision=precision, backend=backend)


# What each setting means here.


def test_auto_precision_per_device() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CPU, enable_quantization=True) == "int8"
    assert resolve_precision("auto", CUDA) == "fp16"
    assert resolve_precision("auto", CUDA, enable_quantization=True) == "fp16"
    assert resolve_precision("bf16", CPU) == "bf16"


def test_int4_needs_cuda_and_says_so() -> None:
    with pytest.raises(PrecisionUnavailableError, match=r"int4 needs bitsandbytes on a CUDA GPU.*use int8"):
        resolve_precision("int4", CPU)
    with pytest.raises(PrecisionUnavailableError, match="int8 runs on the CPU"):
        resolve_precision("int8", MPS)
    assert bitsandbytes_kwargs("int8", CPU) is None


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_bitsandbytes_precisions_name_the_missing_package() -> None:
    with pytest.raises(PrecisionUnavailableError, match="pip install bitsandbytes"):
        bitsandbytes_kwargs("int4", CUDA)


def test_int4_encoder_on_cpu_is_refused(tiny: Path) -> None:
    with pytest.raises(PrecisionUnavailableError, match="CUDA"):
        Encoder(at(tiny, "int4"))


# torch precisions on a tiny BERT.


@pytest.mark.parametrize(("precision", "floor"), [("fp16", 0.999), ("bf16", 0.99), ("int8", 0.95)])
def test_torch_precisions_stay_close_to_fp32(precision: str, floor: float, tiny: Path) -> None:
    reference = Encoder(at(tiny, "fp32")).encode(TEXTS)
    encoder = Encoder(at(tiny, precision))

    vectors = encoder.encode(TEXTS)

    assert encoder.precision == precision and vectors.dtype == np.float32
    similarity = cosines(vectors, reference)
    print(f"tiny BERT {precision}: mean cosine {similarity.mean():.5f}, min {similarity.min():.5f}")
    assert similarity.min() >= floor
    assert not np.array_equal(vectors, reference), f"{precision} must really change the arithmetic"


def test_int8_quantizes_every_linear_layer_but_the_first_transformer_layers(tiny: Path) -> None:
    encoder = Encoder(at(tiny, "int8"))
    assert any(isinstance(module, Int8Linear) for module in encoder.model.modules())
    floats = [name for name, m in encoder.model.named_modules() if isinstance(m, torch.nn.Linear)]
    # BERT's pooler (a CLS head) never runs for embeddings, so it is neither measured nor quantized.
    assert floats and all(".layer.0." in f".{name}" or name.startswith("pooler.") for name in floats), floats


def test_int8_smooths_each_layer_by_its_measured_inputs_unless_turned_off(
    tiny: Path, settings_env: SettingsEnv
) -> None:
    smoothed = [m for m in Encoder(at(tiny, "int8")).model.modules() if isinstance(m, Int8Linear)]
    assert smoothed, "int8 must smooth its Linear layers by default"
    for layer in smoothed:
        assert layer.inverse_scale is not None
        assert torch.isfinite(layer.inverse_scale).all() and (layer.inverse_scale > 0).all()
        assert layer.inverse_scale.std() > 0, "scales must follow the measured channels, not be one constant"

    settings_env.set(EMBEDQ_INT8_SMOOTHING="0")
    plain = Encoder(at(tiny, "int8")).model
    assert not any(isinstance(m, Int8Linear) and m.inverse_scale is not None for m in plain.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in plain.modules()), "plain int8 quantizes every Linear"


def test_smoothing_leaves_the_float_product_unchanged() -> None:
    """x / s through W * s is x through W: only the int8 rounding differs (checked here without it)."""
    torch.manual_seed(0)
    x = torch.randn(8, 16) * torch.linspace(0.1, 30, 16)  # a few loud input channels
    weight = torch.randn(4, 16)
    scale = smoothing_scale(x.abs().amax(dim=0), weight, alpha=0.8)
    assert torch.allclose((x / scale) @ (weight * scale).T, x @ weight.T, atol=1e-4)
    assert ((x / scale).abs().amax(dim=0).max() / (x / scale).abs().amax(dim=0).min()) < (
        x.abs().amax(dim=0).max() / x.abs().amax(dim=0).min()
    ), "smoothing must flatten the activations' channel maxima"


def test_enable_quantization_turns_auto_into_int8(tiny: Path, settings_env: SettingsEnv) -> None:
    settings_env.set(EMB_PROVIDER_ENABLE_QUANTIZATION="true")
    assert Encoder(at(tiny, "auto")).precision == "int8"


def test_max_seq_length_setting_caps_the_model(tiny: Path) -> None:
    encoder = Encoder(at(tiny, "fp32"), max_seq_length=8)
    assert encoder.max_seq_length == 8
    assert encoder.count_tokens(["machine learning data " * 20]) == [8]
    assert Encoder(at(tiny, "fp32"), max_seq_length=10_000).max_seq_length == 64, "the model's own limit stays"


# The ONNX backend.


def test_onnx_fp32_matches_torch(tiny: Path, onnx_dir: Path) -> None:
    torch_vectors = Encoder(at(tiny, "fp32")).encode(TEXTS)
    encoder = Encoder(at(tiny, "fp32", "onnx"))

    assert encoder.onnx is not None and encoder.onnx.path.is_relative_to(onnx_dir)
    np.testing.assert_allclose(encoder.encode(TEXTS), torch_vectors, atol=1e-4)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=1), torch_vectors, atol=1e-4)


def test_onnx_int8_is_quantized_close_and_cached(tiny: Path, onnx_dir: Path) -> None:
    import onnx

    reference = Encoder(at(tiny, "fp32")).encode(TEXTS)
    first = Encoder(at(tiny, "int8", "onnx"))
    graph = onnx.load(str(first.onnx.path)).graph
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention") for node in graph.node)
    assert cosines(first.encode(TEXTS), reference).min() >= 0.95

    second = Encoder(at(tiny, "int8", "onnx"))
    assert second.onnx.path == first.onnx.path, "the export is made once and reused"
    assert len([p for p in onnx_dir.iterdir() if not p.name.startswith(".")]) == 1


def test_onnx_auto_on_cpu_is_fp32_and_other_precisions_are_refused(tiny: Path) -> None:
    assert Encoder(at(tiny, "auto", "onnx")).precision == "fp32"
    with pytest.raises(OnnxUnavailableError, match="runs fp32 or int8"):
        Encoder(at(tiny, "bf16", "onnx"))


def test_missing_onnxruntime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a)
    )
    with pytest.raises(OnnxUnavailableError, match=r"pip install 'embedq\[onnx\]'"):
        require_onnxruntime()


# The real MiniLM: fidelity of the fast paths to sentence-transformers' fp32.


@pytest.fixture(scope="module")
def minilm_texts() -> list[str]:
    return mixed_texts(120, seed=3)


@pytest.fixture(scope="module")
def minilm_reference(minilm_texts: list[str]) -> np.ndarray:
    path = resolve_model(DEFAULT_MODEL, get_settings()).path
    return SentenceTransformer(str(path), device="cpu").encode(minilm_texts, normalize_embeddings=True)


@pytest.mark.parametrize(
    ("precision", "backend", "floor", "smoothing"),
    [("int8", "onnx", 0.99, None), ("int8", "torch", 0.99, None), ("int8", "torch", 0.9, "0")],
)
def test_minilm_fast_paths_fidelity(
    precision: str,
    backend: str,
    floor: float,
    smoothing: str | None,
    minilm_texts: list[str],
    minilm_reference: np.ndarray,
    settings_env: SettingsEnv,
) -> None:
    if smoothing is not None:
        settings_env.set(EMBEDQ_INT8_SMOOTHING=smoothing)
    resolved = resolve_model(DEFAULT_MODEL, get_settings())
    encoder = Encoder(
        ResolvedModel(resolved.name, resolved.path, resolved.source, precision=precision, backend=backend)
    )

    similarity = cosines(encoder.encode(minilm_texts), minilm_reference)

    label = f"MiniLM {backend} {precision} (smoothing {smoothing or 'default'})"
    print(f"{label}: mean cosine {similarity.mean():.5f}, min {similarity.min():.5f}")
    assert similarity.mean() >= floor


def test_int8_linear_matches_float_within_its_rounding_and_keeps_zero_exact() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 7, 64) * torch.linspace(0.1, 4, 64)
    quantized = Int8Linear(linear)

    with torch.inference_mode():
        got, want = quantized(x), linear(x)
        assert got.shape == want.shape == (3, 7, 48) and got.dtype == torch.float32
        similarity = torch.nn.functional.cosine_similarity(got.reshape(-1, 48), want.reshape(-1, 48))
        assert similarity.min() > 0.999 and not torch.equal(got, want)
        assert torch.allclose(quantized(torch.zeros(2, 64)), linear.bias.expand(2, 48), atol=1e-6)
        # SmoothQuant's pair: weight columns times s, inputs divided by s, the same product.
        scale = torch.rand(64) + 0.5
        scaled = torch.nn.Linear(64, 48)
        scaled.weight.copy_(linear.weight * scale)
        scaled.bias.copy_(linear.bias)
        smoothed = Int8Linear(scaled, inverse_scale=1 / scale)
        similarity = torch.nn.functional.cosine_similarity(smoothed(x).reshape(-1, 48), want.reshape(-1, 48))
        assert similarity.min() > 0.999


def test_int8_weights_take_7_bits_where_the_cpu_has_no_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    # vpmaddubsw (AVX2, AVX512 without VNNI) saturates pairs of u8 x s8 products in int16: 255 x 127 x 2 overflows.
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    try:
        for flags, levels in (({"avx2", "avx512f"}, 63), ({"avx2", "avx_vnni"}, 127), ({"amx_int8"}, 127)):
            int8_linear.weight_levels.cache_clear()
            monkeypatch.setattr(int8_linear, "cpu_flags", lambda flags=flags: flags)
            quantized = Int8Linear(linear)
            assert quantized.levels == levels
            # Each output channel's largest weight maps to the largest level.
            assert torch.allclose(quantized.weight_scale * levels, linear.weight.detach().abs().amax(dim=1))
    finally:
        int8_linear.weight_levels.cache_clear()  # the next call reads this machine's flags again
