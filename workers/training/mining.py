"""Hard negatives mined with the base model before training: passages near a query that are not its answer.

Candidates are the passages nearest each query: the training file's own positives, or a collection's chunks
found through its HNSW index (``CandidateSource``, a hook the runner answers with SQL). Every candidate is
scored with the base model, and two filters drop likely false negatives before the first ``per_pair`` are
kept: a candidate scoring above ``(1 - relative_margin)`` x the positive's score (it may answer the query as
well as the positive does), and one nearly identical to the positive (cosine >= ``max_similarity``). A pair
with ``per_pair`` negatives becomes ``per_pair`` (query, positive, negative) triples; pairs that came with a
negative keep it and are not mined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from app.training.pairs import Pair
from app.training.spec import TrainingQuality

CandidateSource = Callable[[np.ndarray, int], list[list[str]]]
"""Returns, for each query vector (normalized rows), the texts of up to ``k`` nearest passages."""


@dataclass(frozen=True)
class MiningRule:
    per_pair: int
    candidates: int
    relative_margin: float
    max_similarity: float

    @classmethod
    def of(cls, quality: TrainingQuality, per_pair: int) -> MiningRule:
        """Return the rule the operator's settings give, keeping ``per_pair`` negatives."""
        return cls(per_pair, quality.mining_candidates, quality.mining_relative_margin, quality.mining_max_similarity)


def mine_negatives(
    model: SentenceTransformer,
    pairs: list[Pair],
    rule: MiningRule,
    source: CandidateSource | None = None,
    batch_size: int = 32,
) -> tuple[list[Pair], dict[str, object]]:
    """Return ``pairs`` with mined triples in place of the pairs without a negative, and the mining's statistics.

    ``source`` None mines from the pairs' own positives.
    """
    to_mine = [p for p in pairs if p.negative is None]
    kept = [p for p in pairs if p.negative is not None]
    if not to_mine:
        return pairs, {"mined_pairs": 0, "negatives": 0}
    answers: dict[str, set[str]] = {}
    for pair in pairs:
        answers.setdefault(pair.query, set()).add(pair.positive)
    queries = _encode(model, [p.query for p in to_mine], batch_size)
    positives = _encode(model, [p.positive for p in to_mine], batch_size)
    candidates = _candidates(model, pairs, queries, rule.candidates + 1, source, batch_size)
    texts = sorted({t for row in candidates for t in row})
    vectors = dict(zip(texts, _encode(model, texts, batch_size), strict=True)) if texts else {}
    stats = _Stats()
    mined: list[Pair] = []
    for i, pair in enumerate(to_mine):
        positive_score = float(queries[i] @ positives[i])
        ceiling = positive_score * (1 - rule.relative_margin) if positive_score > 0 else positive_score
        found: list[str] = []
        for text in candidates[i]:
            if text in answers[pair.query] or text == pair.query:
                continue
            score = float(queries[i] @ vectors[text])
            if float(positives[i] @ vectors[text]) >= rule.max_similarity:
                stats.near_duplicates += 1
            elif score > ceiling:
                stats.false_negatives += 1
            else:
                found.append(text)
                stats.negative_scores.append(score)
            if len(found) == rule.per_pair:
                break
        stats.positive_scores.append(positive_score)
        mined.extend(Pair(pair.query, pair.positive, n) for n in found)
        if not found:
            mined.append(pair)
            stats.without_negative += 1
    return kept + mined, stats.summary(len(to_mine), rule)


def _encode(model: SentenceTransformer, texts: list[str], batch_size: int) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    finally:
        model.train(was_training)
    return np.asarray(vectors, dtype=np.float32)


def _candidates(
    model: SentenceTransformer,
    pairs: list[Pair],
    queries: np.ndarray,
    k: int,
    source: CandidateSource | None,
    batch_size: int,
) -> list[list[str]]:
    if source is not None:
        return source(queries, k)
    corpus = list(dict.fromkeys(p.positive for p in pairs))
    scores = queries @ _encode(model, corpus, batch_size).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(corpus))]
    return [[corpus[j] for j in row] for row in top]


@dataclass
class _Stats:
    false_negatives: int = 0
    near_duplicates: int = 0
    without_negative: int = 0

    def __post_init__(self) -> None:
        self.positive_scores: list[float] = []
        self.negative_scores: list[float] = []

    def summary(self, mined_pairs: int, rule: MiningRule) -> dict[str, object]:
        def mean(values: list[float]) -> float | None:
            return round(float(np.mean(values)), 4) if values else None

        return {
            "mined_pairs": mined_pairs,
            "negatives": len(self.negative_scores),
            "per_pair": rule.per_pair,
            "pairs_without_negative": self.without_negative,
            "dropped_false_negatives": self.false_negatives,
            "dropped_near_duplicates": self.near_duplicates,
            "positive_score_mean": mean(self.positive_scores),
            "negative_score_mean": mean(self.negative_scores),
            "negative_score_max": round(max(self.negative_scores), 4) if self.negative_scores else None,
        }
