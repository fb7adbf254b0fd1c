"""A cross-encoder (reranker) as a capability of the generic encoder: one relevance logit per (query, text) pair.

``CrossEncoderModel`` loads the folder's ``*ForSequenceClassification`` model (one label) instead of its bare
transformer and scores pairs the way sentence-transformers' ``CrossEncoder.predict`` does: the pair is
tokenized as one input (``[CLS] query [SEP] text [SEP]``, truncated longest side first), the classifier's
logit is the raw score, and its sigmoid the score a caller gets by default (as TEI answers). Pairs run in the
generic encoder's length-sorted passes, bounded by EMBEDQ_MAX_BATCH_SIZE rows and EMBEDQ_MAX_BATCH_TOKENS
padded tokens. It gives no vectors: ``encode`` raises ``NotAnEmbeddingModelError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from app.core.config import PrecisionSetting, Settings
from workers.runtime.encoder import Encoder, Tokens
from workers.runtime.pooling import PoolingConfig, UnsupportedModelError
from workers.runtime.precision import Precision, bitsandbytes_kwargs, load_dtype, quantize_dynamic_int8

Pair = tuple[str, str]


class NotAnEmbeddingModelError(ValueError):
    """An embedding request for a reranker, which scores pairs and gives no vectors."""


@dataclass(frozen=True)
class PairScores:
    """One ``score_pairs`` call: the logit of pair i at row i, and each pair's token count as the model read it."""

    logits: np.ndarray
    token_counts: list[int]


class CrossEncoderModel(Encoder):
    """An ``Encoder`` whose model is a one-label sequence classifier: ``score_pairs`` gives each pair's logit."""

    tasks = ("rerank",)

    def _read_pooling(self) -> PoolingConfig:
        # The classifier pools as its architecture does; the encoder's pooling is never used.
        return PoolingConfig()

    def _load_model(self, transformer_dir: Path) -> torch.nn.Module:
        if self.backend == "onnx" or bitsandbytes_kwargs(self.precision, self.device) is not None:
            raise UnsupportedModelError(
                f"{self.name} is a reranker, which embedq runs with the torch backend in fp32, fp16, bf16 or int8 "
                f"(asked: backend {self.backend}, precision {self.precision}): set its alias's backend and precision"
            )
        model = AutoModelForSequenceClassification.from_pretrained(
            transformer_dir,
            dtype=load_dtype(self.precision),
            local_files_only=True,
            trust_remote_code=self._trust_remote_code,
        )
        if model.config.num_labels != 1:
            raise UnsupportedModelError(
                f"{self.name} is a classifier with {model.config.num_labels} labels; a reranker has one (its "
                "relevance logit)"
            )
        return model.to(self.device).eval()

    def _auto_options(self, requested: PrecisionSetting, settings: Settings) -> list[Precision]:
        # `auto` decides by embedding calibration texts, which a reranker does not do: it keeps the device's
        # default precision (fp32 on a CPU, fp16 on CUDA); ask for bf16 explicitly to use it.
        return []

    def _quantize_int8(self, model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        # SmoothQuant calibrates by embedding texts, which a reranker does not do: plain dynamic int8.
        return quantize_dynamic_int8(model)

    def _warm_up(self) -> None:
        self.score_pairs([("warm-up", "warm-up")])

    def map_batches(self, texts: list[str], *args: object, **kwargs: object) -> list[int]:
        raise NotAnEmbeddingModelError(
            f"model {self.name} is a reranker (a cross-encoder): it scores (query, text) pairs at POST /rerank or "
            "/v1/rerank and gives no vectors; embed with an embedding model"
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the classifier's logits [batch] in float32 for a collated batch of pairs (device step)."""
        with torch.inference_mode():
            inputs = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
            return self.model(**inputs).logits[:, 0].float()

    def pair_token_counts(self, pairs: list[Pair]) -> list[int]:
        """Return each pair's token count before truncation, special tokens included."""
        if not pairs:
            return []
        with self._lock:
            encoded = self.tokenizer(
                [q for q, _ in pairs], [t for _, t in pairs], return_attention_mask=False, return_token_type_ids=False
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def score_pairs(
        self, pairs: list[Pair], *, max_tokens: int | None = None, batch_size: int | None = None
    ) -> PairScores:
        """Return the logit of each pair, cut to ``max_tokens`` (within the model's limit), in length-sorted passes."""
        limit = self.max_seq_length if max_tokens is None else min(max_tokens, self.max_seq_length)
        logits = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return PairScores(logits, [])
        size = self._rows_per_pass(batch_size)

        def store(rows: list[int], _: dict[str, torch.Tensor], scores: torch.Tensor) -> None:
            logits[rows] = scores.cpu().numpy()

        with self._lock:
            tokens = self._tokenize_pairs(pairs, limit)
            self._run_passes(tokens, store, size)
        return PairScores(logits, [len(ids) for ids in tokens["input_ids"]])

    def _tokenize_pairs(self, pairs: list[Pair], limit: int) -> Tokens:
        encoded = self.tokenizer(
            [q for q, _ in pairs],
            [t for _, t in pairs],
            truncation="longest_first",
            max_length=limit,
            padding=False,
            return_attention_mask=True,
        )
        names = [*self.tokenizer.model_input_names, "attention_mask"]
        return {name: encoded[name] for name in dict.fromkeys(names) if name in encoded}
