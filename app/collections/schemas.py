"""Request and response bodies of the collections API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from app.jobs.schemas import ProgressMilestones
from app.models.collection import VectorStorage
from app.webhooks.schemas import WebhookUrl

COLLECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
CollectionName = Annotated[str, Field(pattern=COLLECTION_NAME, description="letters, digits, '.', '_', '-'")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FilterValue = StrictStr | int | FiniteFloat | bool | None


STORAGE_DOC = (
    "how vectors are stored: float32 (pgvector vector) or float16 (pgvector halfvec: half the table and "
    "index, cosine scores within ~0.001)"
)


class ChunkingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: Annotated[int, Field(ge=8, le=32_768, description="tokens per chunk, special tokens included")]
    overlap_tokens: Annotated[int, Field(ge=0, le=16_384, description="tokens shared by consecutive chunks")] = 0

    @model_validator(mode="after")
    def _overlap_fits(self) -> ChunkingSpec:
        if self.overlap_tokens > self.max_tokens // 2:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be at most half of max_tokens ({self.max_tokens})"
            )
        return self


class CollectionCreate(BaseModel):
    """A collection: its documents are chunked and embedded with ``model`` (the server default if omitted)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "docs", "model": "all-MiniLM-L6-v2", "chunking": {"max_tokens": 256}}]
        },
    )

    name: CollectionName
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    chunking: ChunkingSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    storage: VectorStorage = Field(default=VectorStorage.FLOAT32, description=STORAGE_DOC)


class CollectionCounts(BaseModel):
    documents: int
    pending: int = Field(description="stored, not embedded yet")
    ready: int
    failed: int
    chunks: int
    vectors: int = Field(description="vectors in the active version")


class VersionOut(BaseModel):
    number: int
    model: str
    dimension: int | None
    storage: VectorStorage
    status: str
    index_status: str
    created_at: datetime
    activated_at: datetime | None


class CollectionLinks(BaseModel):
    self: str
    documents: str
    search: str
    export: str
    reembed: str


class CollectionOut(BaseModel):
    name: str
    model: str = Field(description="the model of the active vector version")
    dimension: int | None = Field(description="null until the model has been loaded once")
    storage: VectorStorage = Field(description="the active version's: " + STORAGE_DOC)
    chunking: ChunkingSpec
    metadata: dict[str, Any]
    counts: CollectionCounts | None = Field(description="present on GET /collections/{name}")
    size_bytes: int | None = Field(description="the active version's vectors and HNSW index on disk")
    versions: list[VersionOut]
    created_at: datetime
    links: CollectionLinks


class CollectionList(BaseModel):
    data: list[CollectionOut]
    next_offset: int | None


class HybridWeights(BaseModel):
    """How much each score counts in hybrid search: (dense * cosine + sparse * sparse dot) / (dense + sparse)."""

    model_config = ConfigDict(extra="forbid")

    dense: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.4
    sparse: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.2

    @model_validator(mode="after")
    def _some_weight(self) -> HybridWeights:
        if self.dense + self.sparse <= 0:
            raise ValueError("at least one of the weights must be above 0")
        return self


class RerankStage(BaseModel):
    """Re-score the first ``top_k`` hits with a reranker and return them in its order."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[
        str | None,
        Field(max_length=200, description="a cross-encoder or BGE-M3 model; default EMBEDQ_DEFAULT_RERANK_MODEL"),
    ] = None
    top_n: Annotated[int | None, Field(ge=1, le=10_000, description="hits to return after reranking (default all)")] = (
        None
    )


class SearchRequest(BaseModel):
    """Nearest chunks to a query text (embedded with the collection's model) or to a query vector."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "how do I reset my password", "top_k": 5, "filter": {"lang": "en"}}]},
    )

    query: Annotated[str | None, Field(min_length=1, max_length=100_000)] = None
    vector: list[FiniteFloat] | None = Field(
        default=None, min_length=1, max_length=65_536, description="a query vector instead of a text"
    )
    model: Annotated[str | None, Field(max_length=200, description="must be the collection's model if given")] = None
    top_k: Annotated[int, Field(ge=1, le=10_000, description="capped at EMBEDQ_SEARCH_MAX_TOP_K")] = 10
    filter: dict[str, FilterValue] | None = Field(default=None, description="metadata fields that must be equal")
    mode: Literal["dense", "sparse", "hybrid"] = Field(
        default="dense",
        description="dense: cosine of the vectors; sparse: inner product of BGE-M3 sparse token weights; hybrid: "
        "both, weighted by `weights` (sparse and hybrid need a BGE-M3 collection and a `query` text)",
    )
    weights: HybridWeights | None = Field(default=None, description="hybrid mode: default dense 0.4, sparse 0.2")
    rerank: RerankStage | None = Field(
        default=None,
        description="re-score the top_k hits with a reranker against `query` and return them best first, with both "
        "scores",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.vector is None):
            raise ValueError("give exactly one of `query` (a text) or `vector` (floats)")
        if self.query is not None and not self.query.strip():
            raise ValueError("`query` is only whitespace: a search needs some text (its hits would be arbitrary)")
        if self.mode != "dense" and self.vector is not None:
            raise ValueError(f"mode {self.mode!r} embeds the query text itself: send `query`, not `vector`")
        if self.weights is not None and self.mode != "hybrid":
            raise ValueError("`weights` apply to mode 'hybrid' only")
        if self.rerank is not None and self.query is None:
            raise ValueError("`rerank` scores the hits against the query text: send `query`, not `vector`")
        return self


class SearchHit(BaseModel):
    document_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]
    score: float = Field(
        description="dense: cosine similarity (1 is identical); sparse: the inner product of token weights; "
        "hybrid: the weighted mean of the two"
    )
    rerank_score: float | None = Field(
        default=None, description="with `rerank`: the reranker's score of (query, text); hits come in its order"
    )


class SearchResponse(BaseModel):
    collection: str
    model: str
    dimension: int
    data: list[SearchHit]


class JobNotifications(BaseModel):
    """Who hears of an ingest or reembed job: its webhook URL and the progress milestones to report."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: WebhookUrl | None = None
    progress_milestones: ProgressMilestones | None = None

    def params(self) -> dict[str, Any]:
        """The job params these notifications add."""
        return {"progress_milestones": self.progress_milestones} if self.progress_milestones else {}


class ReembedRequest(JobNotifications):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    storage: VectorStorage | None = Field(default=None, description="default: the active version's storage")


class IngestErrorOut(BaseModel):
    id: int
    document_id: str | None
    line: int | None = Field(description="line (JSONL, CSV, text) or item number (JSON array) in its file")
    error: str


class IngestErrorList(BaseModel):
    job_id: uuid.UUID
    data: list[IngestErrorOut]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last")
