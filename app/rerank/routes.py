"""Rerank routes: TEI's POST /rerank and Cohere's (and Jina's) POST /v1/rerank, over cross-encoders and BGE-M3.

A cross-encoder scores each (query, text) pair with its classifier; a BGE-M3 model by MaxSim over its ColBERT
vectors. An embedding-only model gets a 400 naming the rerankers there are. /v1 errors take OpenAI's shape.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response

from app.catalog.access import MODEL_API_ERRORS
from app.core.deps import SettingsDep
from app.core.responses import FastJSONResponse
from app.keys.auth import PrincipalDep
from app.rerank import service
from app.rerank.schemas import (
    CohereDocument,
    CohereRerankRequest,
    CohereRerankResponse,
    LegacyRerankResponse,
    RankedText,
    TeiRerankRequest,
)
from app.v1.service import OPENAI_MODEL_ERRORS

_ERRORS = {
    400: {"description": "bad input or a model that cannot rerank, named in the message"},
    404: {"description": "unknown model"},
    504: {"description": "no sync worker answered within EMBEDQ_SYNC_TIMEOUT_S"},
}

router = APIRouter(tags=["rerank"])


@router.post("/rerank", response_model=list[RankedText] | LegacyRerankResponse, responses=_ERRORS)
async def rerank(body: TeiRerankRequest, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Score each of `texts` against `query` and return them best first, as TEI does.

    The old body (`candidates`, `batch_size`) still works and gets the old answer, `{scores, model}` in
    candidate order."""
    field, texts = ("texts", body.texts) if body.texts is not None else ("candidates", body.candidates or [])
    service.check_pairs(body.query, texts, settings, field=field)
    reranker = await service.checked_reranker(body.model, settings, principal, MODEL_API_ERRORS)
    scored = await service.score(
        reranker,
        body.query,
        texts,
        settings,
        raw_scores=body.raw_scores,
        truncate=body.truncate,
        batch_size=body.batch_size,
    )
    if body.candidates is not None:
        return FastJSONResponse({"scores": scored.scores, "model": reranker.model})
    ranked: list[dict[str, Any]] = []
    for i in service.ranking(scored.scores):
        item: dict[str, Any] = {"index": i, "score": scored.scores[i]}
        if body.return_text:
            item["text"] = texts[i]
        ranked.append(item)
    return FastJSONResponse(ranked)


@router.post("/v1/rerank", response_model=CohereRerankResponse, responses=_ERRORS)
async def cohere_rerank(body: CohereRerankRequest, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Score `documents` against `query` and return the best `top_n`, as Cohere's and Jina's rerank APIs do."""
    texts = [doc.text if isinstance(doc, CohereDocument) else doc for doc in body.documents]
    service.check_pairs(body.query, texts, settings, field="documents")
    reranker = await service.checked_reranker(body.model, settings, principal, OPENAI_MODEL_ERRORS)
    scored = await service.score(reranker, body.query, texts, settings)
    results: list[dict[str, Any]] = []
    for i in service.ranking(scored.scores, body.top_n):
        result: dict[str, Any] = {"index": i, "relevance_score": scored.scores[i]}
        if body.return_documents:
            doc = body.documents[i]
            result["document"] = doc.model_dump() if isinstance(doc, CohereDocument) else {"text": doc}
        results.append(result)
    meta = {"billed_units": {"search_units": service.search_units(len(texts))}}
    return FastJSONResponse({"id": str(uuid.uuid4()), "results": results, "meta": meta})
