"""A loaded embedding model: tokenize (CPU), forward (device), pool and normalize (post) into float32 numpy.

The generic path for every family; a family with extra heads (BGE-M3) subclasses it (``workers/runtime/m3.py``)
and ``workers/runtime/capabilities.py`` picks the class.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from app.catalog.families import Family, detect_family
from app.catalog.files import read_json, transformer_dirs
from app.catalog.resolver import ResolvedModel
from app.catalog.sources import HubCandidate, fetch
from app.core.config import PrecisionSetting, Settings, get_settings
from workers.runtime import auto_precision
from workers.runtime.adapters import ModelView, load_transformer
from workers.runtime.batching import budget_chunks, packed_passes
from workers.runtime.onnx_backend import OnnxModel, check_onnx_precision, prepare_onnx
from workers.runtime.packed import forward_packed, supports_packed
from workers.runtime.pass_sizes import PackedSize, packed_size, pass_size
from workers.runtime.pooling import PoolingConfig, pool, read_pooling_config
from workers.runtime.precision import (
    Precision,
    bitsandbytes_kwargs,
    load_dtype,
    load_quantized,
    quantize_dynamic_int8,
    resolve_precision,
)
from workers.runtime.smoothing import calibration_texts, input_absmax, quantize_smoothed

logger = logging.getLogger(__name__)

Tokens = dict[str, list[list[int]]]
"""Unpadded token ids per model input name (input_ids, attention_mask, ...), one list per text."""

_T = TypeVar("_T")

BatchHandler = Callable[[list[int], dict[str, torch.Tensor], torch.Tensor], None]
"""Called per forward pass with the input indices of its rows, the collated batch and its last hidden states."""


@dataclass(frozen=True)
class Encoded:
    """Vectors of one ``encode_counted`` call (row i for text i) and each text's token count from its tokenization.

    The counts include the prompt and special tokens, after truncation: what the model read.
    """

    vectors: np.ndarray
    token_counts: list[int]


_FALLBACK_MAX_SEQ_LENGTH = 512
# Position-embedding tables of RoBERTa-style models reserve the first pad_token_id + 1 rows.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


class Encoder:
    """One embedding model resident on one device; ``encode`` is safe to call from several threads.

    ``precision`` and ``backend`` come from ``model`` (an alias's, else EMBEDQ_MODEL_PRECISION and
    EMBEDQ_MODEL_BACKEND); ``max_seq_length`` caps the model's own token limit (EMBEDQ_MAX_SEQ_LENGTH).
    """

    # What the loaded model serves (app/catalog/tasks.py): a capability that gives no vectors says so.
    tasks: tuple[str, ...] = ("embed",)

    def __init__(
        self,
        model: ResolvedModel,
        *,
        device: torch.device | None = None,
        batch_size: int = 32,
        batch_tokens: int | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        started = time.perf_counter()
        settings = get_settings()
        self.name = model.name
        self.source = model.source
        self.path = model_folder(model)
        self.device = device if device is not None else torch.device("cpu")
        self.backend = model.backend
        if self.backend == "onnx" and self.device.type != "cpu":
            logger.warning("the ONNX backend runs on the CPU: %s runs there, not on %s", model.name, self.device)
            self.device = torch.device("cpu")
        self.precision: Precision = resolve_precision(
            model.precision, self.device, enable_quantization=settings.enable_quantization
        )
        self.precision_reason = _precision_reason(model.precision, self.precision, self.backend, settings)
        if self.backend == "onnx":
            check_onnx_precision(self.precision)
        options = self._auto_options(model.precision, settings)
        if len(options) > 1:
            self.precision = "fp32"  # the reference every option is compared with; the choice is loaded after
        self.batch_size = batch_size
        self.batch_tokens = settings.max_batch_tokens if batch_tokens is None else batch_tokens
        # Packed passes where the model and device allow (workers/runtime/packed.py), else padded ones.
        self.packing: PackedSize | None = packed_size(self.device.type, settings)
        self.family: Family = detect_family(model.name, self.path, model.family)
        pooling = self._read_pooling()
        self.pooling_mode = pooling.mode
        self.normalize_default = pooling.normalize

        transformer_dir = transformer_dirs(self.path)[0]
        st_config: dict[str, Any] = read_json(transformer_dir / "sentence_bert_config.json") or {}
        st_config.setdefault("max_seq_length", _modelscope_max_length(self.path))
        # EMBEDQ_MODELSCOPE_TRUST_REMOTE_CODE: ModelScope models may ship their own modelling code.
        self._trust_remote_code = settings.modelscope_trust_remote_code and self.source.startswith("modelscope")
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            transformer_dir, local_files_only=True, trust_remote_code=self._trust_remote_code
        )
        self.model = self._load_model(transformer_dir)
        text_config = self.model.config.get_text_config()
        self.dimension = int(text_config.hidden_size)
        self.max_seq_length = _max_seq_length(st_config, self.tokenizer, text_config, self.family.max_seq_length)
        if max_seq_length is not None and max_seq_length < self.max_seq_length:
            self.max_seq_length = max_seq_length
        self.onnx: OnnxModel | None = None
        if self.backend == "onnx":
            input_names = list(dict.fromkeys(self.tokenizer.model_input_names))
            export = prepare_onnx(self.model, self.path, input_names, self.precision, settings.onnx_dir)
            self.onnx = OnnxModel(export)
        self._lowercase = bool(st_config.get("do_lower_case", False))
        self._pad_values = {
            "input_ids": self.tokenizer.pad_token_id or 0,
            "token_type_ids": self.tokenizer.pad_token_type_id,
            "attention_mask": 0,
        }
        # Fast tokenizers reset their truncation state on every call, which breaks under concurrent calls.
        self._lock = threading.Lock()
        if len(options) > 1:
            self._choose_precision(options, transformer_dir, settings)
        if self.precision == "int8" and self.backend == "torch":
            # Calibrated by running the float32 model, so only now that it can encode (workers/runtime/smoothing.py).
            self.model = self._quantize_int8(self.model, settings.int8_smoothing)  # type: ignore[arg-type]
        if batch_tokens is None:  # the bounds of this device (workers/runtime/pass_sizes.py)
            size = pass_size(self.device.type, settings, cpu_rows=batch_size)
            self.batch_size, self.batch_tokens = size.rows, size.tokens
        # The first forward pass allocates and picks kernels; pay for it here, not in the first job.
        self._warm_up()
        self.load_seconds = time.perf_counter() - started

    def _read_pooling(self) -> PoolingConfig:
        return read_pooling_config(self.path, family_default=_family_pooling(self.family))

    def _warm_up(self) -> None:
        self.encode(["warm-up"])

    def _load_model(self, transformer_dir: Path) -> torch.nn.Module | ModelView:
        if bitsandbytes_kwargs(self.precision, self.device) is not None:
            return load_quantized(transformer_dir, self.precision, self.device).eval()
        # ONNX exports from float32 weights; int8 is applied to the exported graph, not the torch model.
        dtype = torch.float32 if self.backend == "onnx" else load_dtype(self.precision)
        if self._trust_remote_code:
            model = AutoModel.from_pretrained(
                transformer_dir, dtype=dtype, local_files_only=True, trust_remote_code=True
            )
        else:
            # One resident base serves it and its LoRA adapters (workers/runtime/adapters.py), unless this load
            # transforms the module (int8, ONNX export): then a private copy, adapter merged in.
            shared = self.backend == "torch" and self.precision != "int8"
            model = load_transformer(self.path, transformer_dir, dtype, self.device, shared=shared)
        model.to(self.device).eval()
        return model

    def _auto_options(self, requested: PrecisionSetting, settings: Settings) -> list[Precision]:
        """Return the precisions ``auto`` measures here (one or none: nothing to measure)."""
        if requested != "auto" or self.backend != "torch" or not settings.precision_auto_measure:
            return []
        if settings.enable_quantization and self.device.type == "cpu":
            return []
        return auto_precision.candidates(self.device)

    def _choose_precision(self, options: list[Precision], transformer_dir: Path, settings: Settings) -> None:
        """Set the precision ``auto`` becomes from the cached decision, or measure it now (``self.model`` is fp32)."""
        weights = sorted(transformer_dir.glob("*.safetensors")) + sorted(transformer_dir.glob("*.bin"))
        assert settings.precision_cache_dir is not None
        cached = auto_precision.decision_file(settings.precision_cache_dir, self.path, weights, self.device, "torch")
        decision = auto_precision.read_decision(cached)
        if decision is None:
            started = time.perf_counter()
            decision = auto_precision.decide(
                options,
                self._encoding_at(transformer_dir),
                calibration_texts(),
                device=self.device,
                min_mean=settings.precision_auto_min_mean_cosine,
                min_each=settings.precision_auto_min_cosine,
                clock=time.perf_counter,
            )
            auto_precision.write_decision(cached, decision)
            logger.info("%s in %.1fs: %s", self.name, time.perf_counter() - started, decision.reason)
        self.precision_reason = f"{decision.reason} [{decision.hardware}, decided {decision.decided_at}]"
        if decision.precision != self.precision:
            self.precision = decision.precision
            self.model = None  # type: ignore[assignment]  # the fp32 reference goes before the choice loads
            self.model = self._load_model(transformer_dir)

    def _encoding_at(self, transformer_dir: Path) -> auto_precision.EncodeWith:
        """Return a function giving an encode function for a precision: this fp32 model, or a private copy."""
        reference = self.model

        def encode_with(precision: Precision) -> Callable[[list[str]], np.ndarray]:
            model = reference
            if precision != "fp32":
                model = load_transformer(self.path, transformer_dir, load_dtype(precision), self.device, shared=False)
                model.eval()

            def encode(texts: list[str]) -> np.ndarray:
                self.model = model
                try:
                    return self.encode(texts)
                finally:
                    self.model = reference

            return encode

        return encode_with

    def _quantize_int8(self, model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        """Return ``model`` (float32, private) with int8 Linear layers: smoothed unless ``alpha`` is 0."""
        if alpha <= 0:
            return quantize_dynamic_int8(model)
        absmax = input_absmax(model, lambda: self.encode(calibration_texts()))
        return quantize_smoothed(model, absmax, alpha)

    def encode(
        self,
        texts: list[str],
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
        is_query: bool | None = None,
    ) -> np.ndarray:
        """Return a float32 [len(texts), dimension] array of embeddings, row i for texts[i].

        ``is_query`` picks the family's prompt: True for search queries, False for the documents searched,
        None for neither (only a folder's ``default_prompt_name`` prompt, if any, is put in front).
        """
        return self.encode_counted(texts, normalize=normalize, batch_size=batch_size, is_query=is_query).vectors

    def encode_counted(
        self,
        texts: list[str],
        *,
        normalize: bool | None = None,
        batch_size: int | None = None,
        is_query: bool | None = None,
    ) -> Encoded:
        """Return ``encode``'s array with each text's token count, from the one tokenization the passes used."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        counts = self.map_batches(texts, self._storing(out, normalize), is_query=is_query, batch_size=batch_size)
        return Encoded(vectors=out, token_counts=counts)

    def encode_tokens(
        self, tokens: Tokens, *, normalize: bool | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Return ``encode``'s array for inputs tokenized already (token-id requests), in the same forward passes."""
        out = np.empty((len(tokens["input_ids"]), self.dimension), dtype=np.float32)
        size = self._rows_per_pass(batch_size)
        with self._lock:
            self._run_passes(tokens, self._storing(out, normalize), size)
        return out

    def map_batches(
        self,
        texts: list[str],
        handle: BatchHandler,
        *,
        is_query: bool | None = None,
        batch_size: int | None = None,
    ) -> list[int]:
        """Return each text's token count after running the forward pass over ``texts`` in length-sorted batches.

        The heart of ``encode`` and of the BGE-M3 heads: tokenize (CPU), forward (device), then ``handle``
        (post) with each pass's states, all under the encoder's lock.
        """
        _check_texts(texts)
        size = self._rows_per_pass(batch_size)
        if not texts:
            return []
        with self._lock:
            tokens = self.tokenize(texts, is_query=is_query)
            self._run_passes(tokens, handle, size)
        return [len(ids) for ids in tokens["input_ids"]]

    def _rows_per_pass(self, batch_size: int | None) -> int:
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        return size

    def _run_passes(self, tokens: Tokens, handle: BatchHandler, rows_per_pass: int) -> None:
        lengths = [len(ids) for ids in tokens["input_ids"]]
        size = self.packed_size()
        if size is not None:
            # Passes without padding, attention per small group (workers/runtime/packed.py); the handler gets
            # each group's states padded, as from a padded pass.
            rows = min(rows_per_pass, size.group_rows)
            for groups in packed_passes(lengths, rows, size.group_tokens, size.pass_tokens):
                states = self._run_model(partial(forward_packed, tokens=tokens, groups=groups, device=self.device))
                for group, hidden in zip(groups, states, strict=True):
                    handle(group, self.collate(tokens, group), hidden)
            return
        # Passes of at most rows_per_pass inputs and batch_tokens padded tokens (workers/runtime/batching.py).
        for rows in budget_chunks(lengths, rows_per_pass, self.batch_tokens):
            batch = self.collate(tokens, rows)
            handle(rows, batch, self.forward(batch))

    def packed_size(self) -> PackedSize | None:
        """Return the bounds passes run packed with, or None for padded passes (model, backend or device)."""
        if self.packing is None or self.onnx is not None:
            return None
        module = self.model.base.model if isinstance(self.model, ModelView) else self.model
        return self.packing if supports_packed(module) else None

    def _run_model(self, run: Callable[[torch.nn.Module], _T]) -> _T:
        # A shared base runs under its lock with this encoder's adapter selected (workers/runtime/adapters.py).
        if isinstance(self.model, ModelView):
            return self.model.apply(run)
        return run(self.model)

    def _storing(self, out: np.ndarray, normalize: bool | None) -> BatchHandler:
        """Return a handler writing each pass's pooled (normalized unless told not to) vectors into ``out``."""
        normalize = self.normalize_default if normalize is None else normalize

        def store(rows: list[int], batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> None:
            out[rows] = self.postprocess(hidden, batch["attention_mask"], normalize=normalize)

        return store

    def count_tokens(self, texts: list[str], *, truncate: bool = True, is_query: bool | None = None) -> list[int]:
        """Return each text's token count (prompt and special tokens included) as the model sees it if ``truncate``."""
        _check_texts(texts)
        if not texts:
            return []
        with self._lock:
            encoded = self.tokenizer(
                self._prepare(texts, is_query),
                truncation=truncate,
                max_length=self.max_seq_length if truncate else None,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def token_ids(self, texts: list[str], *, is_query: bool | None = None) -> list[list[int]]:
        """Return each text's token ids as the model reads them before truncation: prompt and special tokens too."""
        _check_texts(texts)
        if not texts:
            return []
        with self._lock:
            encoded = self.tokenizer(
                self._prepare(texts, is_query), return_attention_mask=False, return_token_type_ids=False
            )
        return [list(ids) for ids in encoded["input_ids"]]

    def token_spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Return each text's (start, end) character span per token: no prompt, no special tokens, no truncation.

        For chunking by the model's own tokens (``workers/chunking.py``); spans index the texts as given.
        """
        _check_texts(texts)
        if not texts:
            return []
        # Lowercasing keeps offsets valid only where it keeps the length (it does for nearly all text).
        prepared = [t.lower() if self._lowercase and len(t.lower()) == len(t) else t for t in texts]
        with self._lock:
            encoded = self.tokenizer(
                prepared,
                add_special_tokens=False,
                truncation=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return [[(int(a), int(b)) for a, b in spans] for spans in encoded["offset_mapping"]]

    def tokenize(self, texts: list[str], *, is_query: bool | None = None) -> Tokens:
        """Return the unpadded model inputs of prompted ``texts``, truncated to ``max_seq_length`` (CPU step)."""
        encoded = self.tokenizer(
            self._prepare(texts, is_query),
            truncation=True,
            max_length=self.max_seq_length,
            padding=False,
            return_attention_mask=True,
        )
        names = [*self.tokenizer.model_input_names, "attention_mask"]
        return {name: encoded[name] for name in dict.fromkeys(names) if name in encoded}

    def collate(self, tokens: Tokens, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Return int64 tensors for ``rows`` of ``tokens``, padded to the longest row on the tokenizer's side."""
        width = max(len(tokens["input_ids"][row]) for row in rows)
        left = self.tokenizer.padding_side == "left"
        batch: dict[str, torch.Tensor] = {}
        for name, sequences in tokens.items():
            padded = np.full((len(rows), width), self._pad_values.get(name, 0), dtype=np.int64)
            for i, row in enumerate(rows):
                sequence = sequences[row]
                if left:
                    padded[i, width - len(sequence) :] = sequence
                else:
                    padded[i, : len(sequence)] = sequence
            batch[name] = torch.from_numpy(padded)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the last hidden states [batch, seq, hidden] for a collated batch (device step)."""
        if self.onnx is not None:
            return self.onnx(batch)
        with torch.inference_mode():
            inputs = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
            return self.model(**inputs).last_hidden_state

    def postprocess(self, hidden: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool) -> np.ndarray:
        """Return pooled (and L2-normalized if asked) float32 vectors, [batch, dimension], on the CPU."""
        with torch.inference_mode():
            # Pool in float32 even for half-precision models: sums over 500 tokens lose digits in fp16.
            pooled = pool(hidden.float(), attention_mask.to(hidden.device), self.pooling_mode)
            if normalize:
                pooled = F.normalize(pooled, p=2, dim=-1)
            return pooled.cpu().numpy()

    def _prepare(self, texts: list[str], is_query: bool | None) -> list[str]:
        # sentence-transformers puts the prompt in front first, then lowercases the whole input.
        prompted = self.family.apply_prompt(texts, is_query)
        return [text.lower() for text in prompted] if self._lowercase else prompted

    def __repr__(self) -> str:
        return (
            f"Encoder(name={self.name!r}, family={self.family.name!r}, device={self.device}, "
            f"precision={self.precision!r}, backend={self.backend!r}, "
            f"dimension={self.dimension}, pooling={self.pooling_mode!r}, normalize={self.normalize_default}, "
            f"max_seq_length={self.max_seq_length})"
        )


def _check_texts(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}: convert it with str()")


def model_folder(model: ResolvedModel) -> Path:
    """Return ``model``'s folder, downloading it first when it is on a hub only."""
    return model.path if model.path is not None else fetch(_candidates(model), get_settings())[1]


def _candidates(model: ResolvedModel) -> tuple[HubCandidate, ...]:
    # A ResolvedModel built by hand (not by the resolver) names its hub by its source alone.
    if model.candidates:
        return model.candidates
    return (HubCandidate("modelscope" if model.source == "modelscope" else "huggingface", model.name),)


def _modelscope_max_length(model_dir: Path) -> int | None:
    # A ModelScope folder's configuration.json says how long its pipeline's preprocessor cuts inputs.
    config = read_json(model_dir / "configuration.json")
    preprocessor = config.get("preprocessor") if isinstance(config, dict) else None
    if not isinstance(preprocessor, dict):
        return None
    length = preprocessor.get("max_length") or preprocessor.get("sequence_length")
    return int(length) if isinstance(length, int) and length > 0 else None


def _precision_reason(requested: PrecisionSetting, precision: Precision, backend: str, settings: Settings) -> str:
    """Return why a load runs at ``precision`` when ``auto`` measures nothing (a measured load says its own)."""
    if requested != "auto":
        return f"{precision}: set for this model or by EMBEDQ_MODEL_PRECISION (an explicit precision is never measured)"
    if backend == "onnx":
        return f"auto: {precision}, the ONNX backend's float precision"
    if precision == "int8":
        return "auto: int8, as EMBEDQ_ENABLE_QUANTIZATION asks"
    if not settings.precision_auto_measure:
        return f"auto: {precision}, this device's default (EMBEDQ_PRECISION_AUTO_MEASURE is off)"
    return f"auto: {precision}, the only candidate on this device (bf16 on a CPU needs AVX512-BF16 or AMX)"


def _family_pooling(family: Family) -> PoolingConfig | None:
    if family.pooling is None:
        return None
    return PoolingConfig(mode=family.pooling, normalize=bool(family.normalize))


def _max_seq_length(
    st_config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig,
    family_limit: int | None,
) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    position_limit = positions if isinstance(positions, int) and positions > 0 else None
    processor_kwargs = st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {}
    configured = st_config.get("max_seq_length") or processor_kwargs.get("model_max_length")
    if configured:
        return min(int(configured), position_limit or int(configured))
    # Tokenizers without a limit report a huge sentinel (1e30); only a realistic value counts.
    candidates = (tokenizer.model_max_length, position_limit, family_limit)
    limits = [n for n in candidates if n is not None and 0 < n < 1_000_000]
    if not limits:
        logger.warning("no sequence limit found for this model: truncating at %d tokens", _FALLBACK_MAX_SEQ_LENGTH)
        return _FALLBACK_MAX_SEQ_LENGTH
    return int(min(limits))
