"""Held-out retrieval metrics: each held-out query searches all held-out passages (and hard negatives).

Computed per query (so each metric gets a bootstrap 95% interval over the queries), with the same
definitions as sentence-transformers' InformationRetrievalEvaluator: recall@k is the share of a query's
relevant passages in its top k, MRR@10 the reciprocal rank of the first relevant one within the top 10.
"""

from __future__ import annotations

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from app.training.pairs import Pair

SELECTION_METRIC = "mrr@10"
_SEED = 0


def retrieval_metrics(
    model: SentenceTransformer, pairs: list[Pair], batch_size: int = 32, resamples: int = 0
) -> dict[str, object]:
    """Return recall@1, recall@10 and MRR@10 of ``model`` on ``pairs``, the query and corpus sizes, and (with
    ``resamples``) each metric's bootstrap 95% interval under ``"ci95"``."""
    if not pairs:
        return {}
    corpus: dict[str, int] = {}
    for text in [p.positive for p in pairs] + [p.negative for p in pairs if p.negative is not None]:
        corpus.setdefault(text, len(corpus))
    queries: dict[str, int] = {}
    relevant: dict[int, set[int]] = {}
    for pair in pairs:
        qid = queries.setdefault(pair.query, len(queries))
        relevant.setdefault(qid, set()).add(corpus[pair.positive])
    per_query = _per_query(model, list(queries), list(corpus), relevant, batch_size)
    result: dict[str, object] = {name: round(float(values.mean()), 6) for name, values in per_query.items()}
    result.update(queries=len(queries), corpus=len(corpus))
    if resamples > 0:
        result["ci95"] = bootstrap_intervals(per_query, resamples)
    return result


def _per_query(
    model: SentenceTransformer,
    queries: list[str],
    corpus: list[str],
    relevant: dict[int, set[int]],
    batch_size: int,
) -> dict[str, np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            q = model.encode(queries, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
            d = model.encode(corpus, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    finally:
        model.train(was_training)
    scores = (q @ d.T).float().cpu()
    k = min(10, len(corpus))
    top = torch.topk(scores, k, dim=1).indices.numpy()
    recall1, recall10, rr10 = (np.zeros(len(queries)) for _ in range(3))
    for qid, ranked in enumerate(top):
        wanted = relevant[qid]
        hits = [int(doc) in wanted for doc in ranked]
        recall1[qid] = sum(hits[:1]) / len(wanted)
        recall10[qid] = sum(hits[:10]) / len(wanted)
        first = next((rank for rank, hit in enumerate(hits, start=1) if hit), None)
        rr10[qid] = 1.0 / first if first is not None else 0.0
    return {"recall@1": recall1, "recall@10": recall10, "mrr@10": rr10}


def bootstrap_intervals(per_query: dict[str, np.ndarray], resamples: int) -> dict[str, list[float]]:
    """Return each metric's 2.5th and 97.5th percentile over ``resamples`` resamples of the queries."""
    n = len(next(iter(per_query.values())))
    draws = np.random.default_rng(_SEED).integers(0, n, size=(resamples, n))
    intervals = {}
    for name, values in per_query.items():
        means = values[draws].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        intervals[name] = [round(float(low), 6), round(float(high), 6)]
    return intervals
