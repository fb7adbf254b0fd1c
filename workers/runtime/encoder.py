"""A loaded embedding model: tokenize (CPU), forward (device), pool and normalize (post) into float32 numpy."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from app.catalog.resolver import ResolvedModel
from workers.runtime.pooling import pool, read_pooling_config

logger = logging.getLogger(__name__)

Tokens = dict[str, list[list[int]]]
"""Unpadded token ids per model input name (input_ids, attention_mask, ...), one list per text."""

# Hub downloads fetch what AutoTokenizer/AutoModel and the sentence-transformers files need, not the
# ONNX/OpenVINO exports that many embedding repos also carry.
_HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
_HUB_IGNORE_PATTERNS = ["onnx/*", "openvino/*"]

_FALLBACK_MAX_SEQ_LENGTH = 512


class Encoder:
    """One embedding model resident on one device; ``encode`` is safe to call from several threads."""

    def __init__(self, model: ResolvedModel, *, device: torch.device | None = None, batch_size: int = 32) -> None:
        started = time.perf_counter()
        self.name = model.name
        self.path = model.path if model.path is not None else _download_from_hub(model.name)
        self.device = device if device is not None else torch.device("cpu")
        self.batch_size = batch_size
        pooling = read_pooling_config(self.path)
        self.pooling_mode = pooling.mode
        self.normalize_default = pooling.normalize

        transformer_dir = _transformer_dir(self.path)
        st_config: dict[str, Any] = _read_json(transformer_dir / "sentence_bert_config.json") or {}
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(transformer_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(transformer_dir, dtype=_dtype_for(self.device), local_files_only=True)
        self.model.to(self.device).eval()
        text_config = self.model.config.get_text_config()
        self.dimension = int(text_config.hidden_size)
        self.max_seq_length = _max_seq_length(st_config, self.tokenizer, text_config)
        self._lowercase = bool(st_config.get("do_lower_case", False))
        self._pad_values = {
            "input_ids": self.tokenizer.pad_token_id or 0,
            "token_type_ids": self.tokenizer.pad_token_type_id,
            "attention_mask": 0,
        }
        # Fast tokenizers reset their truncation state on every call, which breaks under concurrent calls.
        self._lock = threading.Lock()
        # The first forward pass allocates and picks kernels; pay for it here, not in the first job.
        self.encode(["warm-up"])
        self.load_seconds = time.perf_counter() - started

    def encode(self, texts: list[str], *, normalize: bool | None = None, batch_size: int | None = None) -> np.ndarray:
        """Return a float32 [len(texts), dimension] array of embeddings, row i for texts[i]."""
        _check_texts(texts)
        normalize = self.normalize_default if normalize is None else normalize
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            tokens = self.tokenize(texts)
            for rows in length_sorted_batches([len(ids) for ids in tokens["input_ids"]], size):
                batch = self.collate(tokens, rows)
                hidden = self.forward(batch)
                out[rows] = self.postprocess(hidden, batch["attention_mask"], normalize=normalize)
        return out

    def count_tokens(self, texts: list[str], *, truncate: bool = True) -> list[int]:
        """Return each text's token count, special tokens included, as the model sees it when ``truncate``."""
        _check_texts(texts)
        if not texts:
            return []
        with self._lock:
            encoded = self.tokenizer(
                self._prepare(texts),
                truncation=truncate,
                max_length=self.max_seq_length if truncate else None,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: list[str]) -> Tokens:
        """Return the unpadded model inputs of ``texts``, truncated to ``max_seq_length`` (CPU step)."""
        encoded = self.tokenizer(
            self._prepare(texts),
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

    def _prepare(self, texts: list[str]) -> list[str]:
        return [text.lower() for text in texts] if self._lowercase else texts

    def __repr__(self) -> str:
        return (
            f"Encoder(name={self.name!r}, device={self.device}, dimension={self.dimension}, "
            f"pooling={self.pooling_mode!r}, normalize={self.normalize_default}, "
            f"max_seq_length={self.max_seq_length})"
        )


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Yield lists of input indices, longest first, so each batch pads to rows of similar length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _check_texts(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}: convert it with str()")


def _dtype_for(device: torch.device) -> torch.dtype:
    # Half precision only where it is fast and well supported; CPU and MPS stay exact.
    return torch.float16 if device.type == "cuda" else torch.float32


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _transformer_dir(model_dir: Path) -> Path:
    # Old sentence-transformers folders keep the Hugging Face model in a subfolder such as 0_Transformer.
    for module in _read_json(model_dir / "modules.json") or []:
        if str(module.get("type", "")).endswith(".Transformer"):
            return model_dir / str(module.get("path", ""))
    return model_dir


def _max_seq_length(st_config: dict[str, Any], tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    position_limit = positions if isinstance(positions, int) and positions > 0 else None
    processor_kwargs = st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {}
    configured = st_config.get("max_seq_length") or processor_kwargs.get("model_max_length")
    if configured:
        return min(int(configured), position_limit or int(configured))
    # Tokenizers without a limit report a huge sentinel (1e30); only a realistic value counts.
    limits = [n for n in (tokenizer.model_max_length, position_limit) if n is not None and 0 < n < 1_000_000]
    if not limits:
        logger.warning("no sequence limit found for this model: truncating at %d tokens", _FALLBACK_MAX_SEQ_LENGTH)
        return _FALLBACK_MAX_SEQ_LENGTH
    return int(min(limits))


def _download_from_hub(name: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, allow_patterns=_HUB_ALLOW_PATTERNS, ignore_patterns=_HUB_IGNORE_PATTERNS)
    except Exception as exc:
        raise RuntimeError(
            f"could not download {name!r} from the Hugging Face Hub ({exc}): check the name and the network, "
            f"or put the model folder under EMBEDQ_MODELS_DIR/{name} and set EMBEDQ_ALLOW_HUB_DOWNLOADS=false"
        ) from exc
    logger.info("downloaded %s from the Hugging Face Hub to %s", name, folder)
    return Path(folder)
