"""HTTP routes of the synchronous API: OpenAI's POST /v1/embeddings, and /vectorize, /vectorize-batch, /tokenize.

Bodies are built as plain JSON and rendered by orjson (no response-model validation): a 2048-vector answer
must not spend longer in the API than in the worker. The schemas still document every response.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.core.deps import SettingsDep
from app.core.responses import FastJSONResponse
from app.keys.auth import PrincipalDep
from app.v1 import service
from app.v1.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    TokenizeRequest,
    TokenizeResponse,
    VectorizeBatchRequest,
    VectorizeBatchResponse,
    VectorizeRequest,
    VectorizeResponse,
)

_ERRORS = {
    400: {"description": "bad input, named in the message"},
    404: {"description": "unknown model"},
    504: {"description": "no sync worker answered within EMBEDQ_SYNC_TIMEOUT_S"},
}
_HEADERS = {
    "X-Embedq-Truncated-Inputs": {"description": "inputs cut to the model's limit", "schema": {"type": "integer"}},
    "X-Embedq-Batch-Requests": {"description": "requests that shared the batch", "schema": {"type": "integer"}},
}

openai_router = APIRouter(prefix="/v1", tags=["openai"])
router = APIRouter(tags=["sync"])


@openai_router.post("/embeddings", response_model=EmbeddingsResponse, responses={200: {"headers": _HEADERS}, **_ERRORS})
async def create_embeddings(body: EmbeddingsRequest, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Embed `input` now, as OpenAI's API does; errors come in OpenAI's `{"error": {...}}` shape."""
    texts, token_ids = service.split_input(body.input)
    embedded = await service.embed(
        body.model,
        settings,
        principal,
        texts=texts,
        token_ids=token_ids,
        is_query=body.is_query,
        dimensions=body.dimensions,
    )
    content = {
        "object": "list",
        "data": service.embedding_items(embedded.vectors, body.encoding_format),
        "model": embedded.model,
        "usage": {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens},
    }
    return FastJSONResponse(content, headers=embedded.headers())


@router.post("/vectorize", response_model=VectorizeResponse, responses={200: {"headers": _HEADERS}, **_ERRORS})
async def vectorize(body: VectorizeRequest, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Embed one text; `is_query` picks the model family's query or passage prompt."""
    embedded = await service.embed(body.model, settings, principal, texts=[body.text], is_query=body.is_query)
    content = {"vector": embedded.vectors[0].tolist(), "model": embedded.model, "dimension": embedded.vectors.shape[1]}
    return FastJSONResponse(content, headers=embedded.headers())


@router.post(
    "/vectorize-batch", response_model=VectorizeBatchResponse, responses={200: {"headers": _HEADERS}, **_ERRORS}
)
async def vectorize_batch(body: VectorizeBatchRequest, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Embed `items` in order; `is_query` picks the model family's query or passage prompt."""
    embedded = await service.embed(body.model, settings, principal, texts=body.items, is_query=body.is_query)
    content = {"vectors": embedded.vectors.tolist(), "model": embedded.model, "dimension": embedded.vectors.shape[1]}
    return FastJSONResponse(content, headers=embedded.headers())


@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(body: TokenizeRequest, settings: SettingsDep, principal: PrincipalDep) -> TokenizeResponse:
    """Return each input's token ids (special tokens included unless `add_special_tokens` is false), token strings
    and token count, from the model's own tokenizer."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    tokenized = await service.tokenize(
        body.model, texts, settings, principal, add_special_tokens=body.add_special_tokens
    )
    return TokenizeResponse.model_validate(tokenized)
