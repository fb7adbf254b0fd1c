"""Request and response bodies of the synchronous API: OpenAI's embeddings, /vectorize and /tokenize."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

# Token ids are vocabulary indexes within int32; a negative one is refused by the service, naming the input.
TokenId = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
EmbeddingInput = StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]

_INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"


class EncodingFormat(StrEnum):
    FLOAT = "float"
    BASE64 = "base64"


def _input_shape(value: Any) -> Any:
    """Reject, with one readable message, an input that is none of the four shapes OpenAI accepts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"input must be {_INPUT_SHAPES}, and not empty")
    first = value[0]
    kind = list if isinstance(first, list) else type(first)
    if kind not in (str, int, list) or any(type(item) is not kind for item in value):
        raise ValueError(f"input must be {_INPUT_SHAPES}; this array mixes types or holds other values")
    return value


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, plus embedq's optional ``is_query``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["hello"]}]},
    )

    input: EmbeddingInput
    model: Annotated[str | None, Field(min_length=1, max_length=200, description="name or alias")] = None
    encoding_format: EncodingFormat = EncodingFormat.FLOAT
    # Strict, as OpenAI's are: true is not 1 dimension, "128" is not a number, "yes" is not a boolean.
    dimensions: Annotated[
        StrictInt | None, Field(ge=1, le=65_536, description="keep the first N dimensions (Matryoshka models)")
    ] = None
    user: str | None = Field(default=None, description="accepted and ignored")
    is_query: StrictBool | None = Field(
        default=None,
        description="embedq extension: true applies the family's query prompt, false its passage prompt",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _one_of_four_shapes(cls, value: Any) -> Any:
        return _input_shape(value)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class VectorizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "hello", "is_query": True}]})

    text: StrictStr = Field(min_length=1)
    is_query: bool = Field(default=False, description="true: the family's query prompt; false: its passage prompt")
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None


class VectorizeResponse(BaseModel):
    vector: list[float]
    model: str
    dimension: int


class VectorizeBatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"items": ["a", "b"], "is_query": False}]}
    )

    items: list[StrictStr] = Field(min_length=1)
    is_query: bool = Field(default=False, description="true: the family's query prompt; false: its passage prompt")
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None


class VectorizeBatchResponse(BaseModel):
    vectors: list[list[float]]
    model: str
    dimension: int


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"input": ["hello world"]}]})

    input: StrictStr | list[StrictStr]
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    add_special_tokens: bool = Field(
        default=True,
        description="true: ids as the model reads them (special tokens and prompt included, len(ids) == count); "
        "false: the text's own ids, to send back as token-id input",
    )


class TokenizedInput(BaseModel):
    index: int
    ids: list[int] = Field(
        description="token ids the model reads, special tokens included (add_special_tokens=false: without them)"
    )
    tokens: list[str]
    count: int = Field(description="tokens the model reads for this input before truncation, special tokens included")
    truncated: bool = Field(description="whether count is over max_tokens, so the input would be truncated")


class TokenizeResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    max_tokens: int
    data: list[TokenizedInput]
    total_tokens: int = Field(description="sum of count over the inputs")
