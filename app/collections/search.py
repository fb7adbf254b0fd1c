"""Search a collection: embed the query (or take its vector), check it fits, and ask the vector store.

Dense search is by cosine; a BGE-M3 collection also answers sparse and hybrid queries, embedded by the
worker's hybrid op. A ``rerank`` stage re-scores the hits found with a reranker (``app/rerank``) and returns
them in its order, each with both scores.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.catalog.access import JOB_API_ERRORS
from app.catalog.dimension import model_dimension
from app.catalog.resolver import same_model
from app.collections.repository import CollectionRepository
from app.collections.schemas import HybridWeights, RerankStage, SearchHit, SearchRequest, SearchResponse
from app.collections.service import require_collection
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.errors import InvalidRequestError
from app.core.security import Principal
from app.hybrid.service import check_hybrid_model
from app.models.collection import Collection, CollectionVersion
from app.rerank import service as rerank_service


async def search(
    session: Session, name: str, payload: SearchRequest, settings: Settings, principal: Principal
) -> SearchResponse:
    """Return the chunks nearest the query, best first; refuses another model or a wrong-size vector."""
    from starlette.concurrency import run_in_threadpool

    collection, version = await run_in_threadpool(_search_target, session, name, principal)
    reranker = None
    if payload.rerank is not None:
        reranker = await rerank_service.checked_reranker(payload.rerank.model, settings, principal, JOB_API_ERRORS)
    if payload.model is not None and not same_model(payload.model, version.model, settings):
        raise InvalidRequestError(
            f"collection {name!r} holds {_dims(version.dimension)} vectors of {version.model}; the request names "
            f"{payload.model} ({_dimension_of(payload.model, settings)}): search with {version.model}, or reembed "
            f"the collection with {payload.model} first",
            param="model",
        )
    vector = np.asarray(payload.vector, dtype=np.float32) if payload.vector is not None else None
    sparse: SparseQuery | None = None
    if payload.mode != "dense":
        check_hybrid_model(version.model, settings, principal)
        vector, sparse = await _embed_hybrid_query(version.model, payload.query or "")
    if vector is None:
        vector = await _embed_query(version.model, payload.query or "")
    if version.dimension is not None and vector.shape[0] != version.dimension:
        raise InvalidRequestError(
            f"the query vector has {vector.shape[0]} dimensions but collection {name!r} holds "
            f"{version.dimension}-dimensional vectors of {version.model}: embed the query with {version.model}",
            param="vector",
        )
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise InvalidRequestError("the query vector must be finite and not all zeros", param="vector")
    top_k = min(payload.top_k, settings.search_max_top_k)
    rows = await run_in_threadpool(_nearest, session, version, vector, sparse, payload, top_k, settings)
    hits = [
        SearchHit(document_id=r.document_id, chunk_index=r.chunk_index, text=r.text, metadata=r.metadata, score=r.score)
        for r in rows
    ]
    if reranker is not None and payload.rerank is not None and hits:
        hits = await _reranked(reranker, payload.query or "", hits, payload.rerank, settings)
    return SearchResponse(
        collection=collection.name, model=version.model, dimension=int(version.dimension or vector.shape[0]), data=hits
    )


async def _reranked(
    reranker: rerank_service.Reranker, query: str, hits: list[SearchHit], stage: RerankStage, settings: Settings
) -> list[SearchHit]:
    """Return ``hits`` in the reranker's order, each with its rerank score, the best ``stage.top_n`` if given."""
    texts = [hit.text for hit in hits]
    rerank_service.check_pairs(query, texts, settings, field="rerank")
    scored = await rerank_service.score(reranker, query, texts, settings)
    return [
        hits[i].model_copy(update={"rerank_score": scored.scores[i]})
        for i in rerank_service.ranking(scored.scores, stage.top_n)
    ]


def _search_target(session: Session, name: str, principal: Principal) -> tuple[Collection, CollectionVersion]:
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal)
    return collection, repo.active_version(collection.id)


@dataclass(frozen=True)
class SparseQuery:
    weights: dict[int, float]
    dimension: int


def _nearest(
    session: Session,
    version: CollectionVersion,
    vector: np.ndarray,
    sparse: SparseQuery | None,
    payload: SearchRequest,
    top_k: int,
    settings: Settings,
) -> list[Any]:
    """Search the version: by dense cosine, or (``sparse`` given) by the sparse/hybrid score of ``payload.mode``."""
    store = VectorStore(session)
    if version.dimension is None or not store.vector_table_exists(version.id):
        return []
    limit = settings.search_exact_max_vectors
    exact = limit > 0 and store.holds_at_most(version.id, limit)
    common = {"top_k": top_k, "metadata_filter": payload.filter, "ef_search": settings.search_ef_search, "exact": exact}
    if sparse is None:
        return store.search(version, vector, **common)
    dense_weight, sparse_weight = (0.0, 1.0) if payload.mode == "sparse" else _hybrid_weights(payload)
    return store.search_hybrid(
        version, vector, sparse.weights, sparse.dimension, dense_weight=dense_weight, sparse_weight=sparse_weight,
        **common,
    )  # fmt: skip


def _hybrid_weights(payload: SearchRequest) -> tuple[float, float]:
    weights = payload.weights or HybridWeights()
    return weights.dense, weights.sparse


async def _embed_hybrid_query(model: str, query: str) -> tuple[np.ndarray, SparseQuery]:
    from app.inference.dispatch import infer

    result = await infer("hybrid", model, {"texts": [query], "return_colbert": False})
    item = result["data"][0]
    sparse = SparseQuery({int(k): float(v) for k, v in item["sparse"].items()}, int(result["sparse_dimension"]))
    return np.asarray(item["dense"], dtype=np.float32), sparse


async def _embed_query(model: str, query: str) -> np.ndarray:
    from app.inference.dispatch import infer

    result = await infer("embed", model, {"texts": [query], "is_query": True})
    return np.frombuffer(base64.b64decode(result["embeddings"]), dtype="<f4").astype(np.float32)


def _dimension_of(model: str, settings: Settings) -> str:
    try:
        return _dims(model_dimension(model, settings))
    except (LookupError, ValueError):
        return "not a model this server knows"


def _dims(dimension: int | None) -> str:
    return f"{dimension}-dimensional" if dimension is not None else "dimension unknown until loaded"
