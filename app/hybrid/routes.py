"""BGE-M3 routes: dense + sparse + ColBERT vectors in one pass (its MaxSim rerank is served by app/rerank).

A model without BGE-M3's heads gets a 400 naming the models that have them.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.core.deps import SettingsDep
from app.hybrid import service
from app.hybrid.schemas import (
    HybridBatchRequest,
    HybridBatchResponse,
    HybridRequest,
    HybridResponse,
)
from app.keys.auth import PrincipalDep

_ERRORS = {
    400: {"description": "bad input, or a model without BGE-M3's sparse/ColBERT heads"},
    404: {"description": "unknown model"},
    504: {"description": "no sync worker answered within EMBEDQ_SYNC_TIMEOUT_S"},
}

router = APIRouter(tags=["hybrid"])


@router.post("/vectorize-hybrid", response_model=HybridResponse, responses=_ERRORS)
async def vectorize_hybrid(body: HybridRequest, settings: SettingsDep, principal: PrincipalDep) -> HybridResponse:
    """Return one text's dense vector, sparse token weights and (with `return_colbert`) ColBERT vectors."""
    model = await run_in_threadpool(service.check_hybrid_model, body.model, settings, principal)
    (item,) = await service.hybrid(model, [body.text], return_colbert=body.return_colbert)
    return HybridResponse(**item, model=model, dimension=len(item["dense"]))


@router.post("/vectorize-batch-hybrid", response_model=HybridBatchResponse, responses=_ERRORS)
async def vectorize_batch_hybrid(
    body: HybridBatchRequest, settings: SettingsDep, principal: PrincipalDep
) -> HybridBatchResponse:
    """Return the hybrid vectors of each of `items`, in order."""
    model = await run_in_threadpool(service.check_hybrid_model, body.model, settings, principal)
    items = await service.hybrid(model, body.items, return_colbert=body.return_colbert)
    return HybridBatchResponse(data=items, model=model, dimension=len(items[0]["dense"]))
