"""The body of POST /collections/{name}/sources."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from app.collections.schemas import JobNotifications
from app.sources.spec import SourceFormat, SourceSpec

_Column = Annotated[str, Field(min_length=1, max_length=200)]


class SourceRequest(JobNotifications):
    """Where the documents live and how to read them; the workers list, shard and read them."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="s3://bucket/prefix/, a glob (s3://bucket/corpus/*.parquet), an https:// URL of one file or, "
        "with {a,b} and [00-41] patterns, several, or file:///path under an allowed root",
        examples=["s3://corpus/wiki/*.parquet"],
    )
    format: SourceFormat | None = Field(default=None, description="default: each object's extension says")
    id_field: _Column = "id"
    text_field: _Column = "text"
    metadata_fields: list[_Column] | None = Field(
        default=None, max_length=200, description="fields kept as metadata; default: every other field or column"
    )
    credentials: str | None = Field(
        default=None,
        max_length=200,
        description="the name of a credential set the operator configured (EMBEDQ_SOURCE_CREDENTIALS); "
        "default: the server's standard AWS credentials",
    )
    delete_missing: bool = Field(
        default=False, description="remove the documents of objects an earlier sync of this URI read that are gone"
    )

    def spec(self) -> SourceSpec:
        """Return what the job's params keep of the request (no secret: credentials go by name)."""
        return SourceSpec(
            uri=self.uri,
            format=self.format,
            id_field=self.id_field,
            text_field=self.text_field,
            metadata_fields=tuple(self.metadata_fields) if self.metadata_fields is not None else None,
            credentials=self.credentials,
            delete_missing=self.delete_missing,
        )
