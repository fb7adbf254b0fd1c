"""Bodies of /vectorize-hybrid and /vectorize-batch-hybrid (BGE-M3 models only)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

ModelName = Annotated[str | None, Field(min_length=1, max_length=200, description="default: EMBEDQ_DEFAULT_MODEL")]


class HybridRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "hello", "return_colbert": True}]}
    )

    text: StrictStr = Field(min_length=1)
    return_colbert: bool = False
    model: ModelName = None


class HybridBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": ["a", "b"]}]})

    items: list[StrictStr] = Field(min_length=1)
    return_colbert: bool = False
    model: ModelName = None


class HybridVectors(BaseModel):
    """One text's three outputs, as FlagEmbedding's BGEM3FlagModel defines them."""

    dense: list[float] = Field(description="the normalized [CLS] vector")
    sparse: dict[str, float] = Field(description="token id -> weight (ReLU of the sparse head, max per token id)")
    sparse_tokens: dict[str, float] = Field(description="the same weights by token string")
    colbert: list[list[float]] | None = Field(
        default=None, description="one normalized vector per token after [CLS], padding dropped"
    )


class HybridResponse(HybridVectors):
    model: str
    dimension: int


class HybridBatchResponse(BaseModel):
    data: list[HybridVectors]
    model: str
    dimension: int
