"""BGE-M3 as a capability of the generic encoder: three outputs from one forward pass and MaxSim scores.

``M3Encoder`` is the generic ``Encoder`` plus the folder's two heads; the generic path knows nothing of them.

As FlagEmbedding defines them (``BGEM3FlagModel``), from the folder's ``sparse_linear.pt`` (Linear(hidden, 1))
and ``colbert_linear.pt`` (Linear(hidden, hidden)):

- dense: the [CLS] state, L2-normalized;
- sparse: ReLU(sparse head) per token, the max weight per token id, without the special tokens
  (cls, eos, pad, unk) and without zero weights;
- colbert: the colbert head over every token after [CLS], padding dropped, each vector L2-normalized;
- MaxSim(q, d) = mean over q's token vectors of the max dot product with d's token vectors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.catalog.families import M3_COLBERT_HEAD, M3_SPARSE_HEAD
from app.catalog.resolver import ResolvedModel
from workers.runtime.encoder import Encoder

logger = logging.getLogger(__name__)

_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")


class NotHybridModelError(ValueError):
    """A hybrid (sparse/ColBERT) request for a model without BGE-M3 heads."""


@dataclass(frozen=True)
class M3Heads:
    """The sparse and ColBERT heads of a BGE-M3 folder, and the token ids the sparse output leaves out."""

    sparse: torch.nn.Linear
    colbert: torch.nn.Linear
    unused_token_ids: frozenset[int]


@dataclass
class HybridOutput:
    """Per input text: a dense vector (row), a sparse {token id: weight} map, and ColBERT vectors if asked."""

    dense: np.ndarray
    sparse: list[dict[int, float]]
    colbert: list[np.ndarray] | None


class M3Encoder(Encoder):
    """An ``Encoder`` with BGE-M3's sparse and ColBERT heads (``m3_heads``; None when its folder lacks them)."""

    def __init__(self, model: ResolvedModel, **options: Any) -> None:
        super().__init__(model, **options)
        started = time.perf_counter()
        self.m3_heads: M3Heads | None = load_m3_heads(self.path, self.tokenizer, self.dimension)
        self.load_seconds += time.perf_counter() - started


def m3_heads_of(encoder: Encoder) -> M3Heads | None:
    """Return ``encoder``'s BGE-M3 heads, or None for a model without them."""
    return encoder.m3_heads if isinstance(encoder, M3Encoder) else None


def load_m3_heads(folder: Path, tokenizer: Any, hidden_size: int) -> M3Heads | None:
    """Return the heads saved in ``folder``, or None (with a warning) when the folder lacks them."""
    sparse_file, colbert_file = folder / M3_SPARSE_HEAD, folder / M3_COLBERT_HEAD
    if not (sparse_file.is_file() and colbert_file.is_file()):
        logger.warning(
            "%s is a BGE-M3 model without %s and %s: it serves dense vectors only",
            folder,
            M3_SPARSE_HEAD,
            M3_COLBERT_HEAD,
        )
        return None
    sparse = _linear(sparse_file, hidden_size)
    colbert = _linear(colbert_file, hidden_size)
    return M3Heads(sparse=sparse, colbert=colbert, unused_token_ids=_special_token_ids(tokenizer))


def _linear(path: Path, hidden_size: int) -> torch.nn.Linear:
    state = torch.load(path, map_location="cpu", weights_only=True)
    out_features, in_features = state["weight"].shape
    if in_features != hidden_size:
        raise ValueError(f"{path} expects {in_features}-dimensional token states, but the model gives {hidden_size}")
    layer = torch.nn.Linear(in_features, out_features)
    layer.load_state_dict(state)
    return layer.float().eval()


def _special_token_ids(tokenizer: Any) -> frozenset[int]:
    ids = set()
    for attribute in _SPECIAL_TOKENS:
        token = getattr(tokenizer, attribute, None)
        if token is not None:
            ids.add(int(tokenizer.convert_tokens_to_ids(token)))
    return frozenset(ids)


def require_heads(encoder: Encoder) -> M3Heads:
    """Return ``encoder``'s BGE-M3 heads, or raise NotHybridModelError saying which models have them."""
    heads = m3_heads_of(encoder)
    if heads is None:
        raise NotHybridModelError(
            f"model {encoder.name} (family {encoder.family.name}) has no sparse/ColBERT heads: hybrid vectors and "
            f"MaxSim rerank need a BGE-M3 model (e.g. BAAI/bge-m3) whose folder holds {M3_SPARSE_HEAD} and "
            f"{M3_COLBERT_HEAD}"
        )
    return heads


def encode_hybrid(
    encoder: Encoder,
    texts: list[str],
    *,
    return_sparse: bool = True,
    return_colbert: bool = False,
    batch_size: int | None = None,
) -> HybridOutput:
    """Return the dense, sparse and (if asked) ColBERT outputs of ``texts``, in input order."""
    heads = require_heads(encoder)
    dense = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    sparse: list[dict[int, float]] = [{} for _ in texts]
    colbert: list[np.ndarray] = [np.empty((0, encoder.dimension), dtype=np.float32) for _ in texts]

    def heads_of(rows: list[int], batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> None:
        with torch.inference_mode():
            states = hidden.float().cpu()
            mask = batch["attention_mask"]
            dense[rows] = F.normalize(states[:, 0], dim=-1).numpy()
            if return_sparse:
                weights = torch.relu(heads.sparse(states)).squeeze(-1).numpy()
                for i, row in enumerate(rows):
                    sparse[row] = _token_weights(weights[i], batch["input_ids"][i].tolist(), mask[i], heads)
            if return_colbert:
                vectors = F.normalize(heads.colbert(states[:, 1:]), dim=-1).numpy()
                for i, row in enumerate(rows):
                    colbert[row] = vectors[i][mask[i, 1:].bool().numpy()]

    encoder.map_batches(texts, heads_of, batch_size=batch_size)
    return HybridOutput(dense=dense, sparse=sparse, colbert=colbert if return_colbert else None)


def _token_weights(weights: np.ndarray, ids: list[int], mask: torch.Tensor, heads: M3Heads) -> dict[int, float]:
    result: dict[int, float] = {}
    for weight, token_id, real in zip(weights.tolist(), ids, mask.tolist(), strict=True):
        if not real or token_id in heads.unused_token_ids or weight <= 0:
            continue
        if weight > result.get(token_id, 0.0):
            result[token_id] = weight
    return result


def maxsim(query: np.ndarray, candidate: np.ndarray) -> float:
    """Return the MaxSim score: the mean over query token vectors of their best dot product with the candidate's."""
    if len(query) == 0 or len(candidate) == 0:
        return 0.0
    return float((query @ candidate.T).max(axis=1).mean())


def rerank_maxsim(encoder: Encoder, query: str, candidates: list[str], *, batch_size: int | None = None) -> list[float]:
    """Return each candidate's MaxSim score against ``query``, in candidate order: the query is encoded once."""
    query_vectors = encode_hybrid(encoder, [query], return_sparse=False, return_colbert=True).colbert
    assert query_vectors is not None
    candidate_vectors = encode_hybrid(
        encoder, candidates, return_sparse=False, return_colbert=True, batch_size=batch_size
    ).colbert
    assert candidate_vectors is not None
    return [maxsim(query_vectors[0], vectors) for vectors in candidate_vectors]
