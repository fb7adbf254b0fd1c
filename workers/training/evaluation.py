"""Held-out retrieval metrics: each held-out query searches all held-out passages (and hard negatives)."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from app.training.pairs import Pair

REPORTED = {"recall@1": "cosine_recall@1", "recall@10": "cosine_recall@10", "mrr@10": "cosine_mrr@10"}


def retrieval_metrics(model: SentenceTransformer, pairs: list[Pair], batch_size: int = 32) -> dict[str, float]:
    """Return recall@1, recall@10 and MRR@10 of ``model`` on ``pairs``, plus the query and corpus sizes."""
    if not pairs:
        return {}
    corpus_ids: dict[str, str] = {}
    for text in [p.positive for p in pairs] + [p.negative for p in pairs if p.negative is not None]:
        corpus_ids.setdefault(text, f"d{len(corpus_ids)}")
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for pair in pairs:
        qid = query_ids.setdefault(pair.query, f"q{len(query_ids)}")
        relevant.setdefault(qid, set()).add(corpus_ids[pair.positive])
    evaluator = InformationRetrievalEvaluator(
        queries={qid: text for text, qid in query_ids.items()},
        corpus={cid: text for text, cid in corpus_ids.items()},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10],
        map_at_k=[10],
        batch_size=batch_size,
        write_csv=False,
        score_functions={"cosine": cos_sim},
    )
    was_training = model.training
    model.eval()
    try:
        metrics = evaluator(model)
    finally:
        model.train(was_training)
    result = {name: round(float(metrics[key]), 6) for name, key in REPORTED.items()}
    return {**result, "queries": len(query_ids), "corpus": len(corpus_ids)}
