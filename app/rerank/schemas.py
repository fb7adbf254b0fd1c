"""Bodies of POST /rerank (TEI's shape, and the old BGE-M3 body) and POST /v1/rerank (Cohere's and Jina's shape)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

ModelName = Annotated[
    str | None,
    Field(min_length=1, max_length=200, description="default: EMBEDQ_DEFAULT_RERANK_MODEL, else EMBEDQ_DEFAULT_MODEL"),
]


class TeiRerankRequest(BaseModel):
    """TEI's rerank body; ``candidates`` (with ``batch_size``) is the old body, answered in the old shape."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "what is a panda?", "texts": ["a bear of China", "a city"]}]},
    )

    query: StrictStr = Field(description="the query every text is scored against")
    texts: list[StrictStr] | None = Field(
        default=None, description="the texts to score (at most EMBEDQ_RERANK_MAX_PAIRS)"
    )
    raw_scores: bool = Field(default=False, description="true: the model's logit; false: its sigmoid, in 0..1")
    return_text: bool = Field(default=False, description="true: each result carries its text")
    truncate: bool | None = Field(
        default=None,
        description="false: a pair over the model's limit (or EMBEDQ_RERANK_MAX_TOKENS_PER_PAIR) is a 400; "
        "default EMBEDQ_TRUNCATE",
    )
    truncation_direction: Literal["Right"] | None = Field(
        default=None,
        description="TEI's: embedq cuts an over-long pair at its end (Right), the longer side first; Left is a 422",
    )
    model: ModelName = None
    candidates: list[StrictStr] | None = Field(
        default=None, description="the old body's texts: scores come back as {scores, model}, in candidate order"
    )
    batch_size: int | None = Field(default=None, ge=1, le=1024, description="the old body's candidates per pass")

    @model_validator(mode="after")
    def _one_list(self) -> TeiRerankRequest:
        if (self.texts is None) == (self.candidates is None):
            raise ValueError(
                'send the texts to score as `texts` ({"query": "...", "texts": ["...", "..."]}); '
                "`candidates` is the old name of the same list, and only one of the two may be given"
            )
        return self


class RankedText(BaseModel):
    """One text of a TEI rerank answer, best first."""

    index: int = Field(description="the text's position in `texts`")
    score: float
    text: str | None = Field(default=None, description="with return_text")


class LegacyRerankResponse(BaseModel):
    """The old /rerank answer, for a body with `candidates`."""

    scores: list[float] = Field(description="one score per candidate, in candidate order")
    model: str


class CohereDocument(BaseModel):
    """A document as an object: its ``text`` is scored; other fields come back with it (return_documents)."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr


class CohereRerankRequest(BaseModel):
    """Cohere's (and Jina's) rerank body. Cohere's other options (rank_fields, max_chunks_per_doc) are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "BAAI/bge-reranker-base", "query": "what is a panda?", "documents": ["a", "b"]}]
        },
    )

    query: StrictStr
    documents: list[StrictStr | CohereDocument]
    model: ModelName = None
    top_n: int | None = Field(
        default=None, ge=1, le=100_000, description="how many results: the best top_n (default all)"
    )
    return_documents: bool = Field(default=False, description="true: each result carries its document")


class CohereResult(BaseModel):
    index: int
    relevance_score: float = Field(description="the sigmoid of the model's logit (0..1); MaxSim for BGE-M3")
    document: dict[str, Any] | None = Field(default=None, description="with return_documents: {text, ...}")


class BilledUnits(BaseModel):
    search_units: int = Field(description="one per started 100 documents, as Cohere counts them")


class CohereMeta(BaseModel):
    billed_units: BilledUnits


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta
