"""What a source job carries in its params: where to read and how; never a secret (credentials go by name)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any


class SourceFormat(StrEnum):
    PARQUET = "parquet"  # id and text columns; row groups are shards
    JSONL = "jsonl"  # one {"id", "text", "metadata"} object per line; byte ranges are shards
    CSV = "csv"  # a header with id and text columns; byte ranges are shards
    TEXT = "text"  # each file is one document, its id the object's path under the source


_BY_EXTENSION = {
    ".parquet": SourceFormat.PARQUET,
    ".pq": SourceFormat.PARQUET,
    ".jsonl": SourceFormat.JSONL,
    ".ndjson": SourceFormat.JSONL,
    ".csv": SourceFormat.CSV,
    ".txt": SourceFormat.TEXT,
    ".md": SourceFormat.TEXT,
}


def format_of_object(path: str) -> SourceFormat | None:
    """Return the format an object's extension says, or None (such objects are skipped unless a format is given)."""
    return _BY_EXTENSION.get(PurePosixPath(path).suffix.lower())


@dataclass(frozen=True)
class SourceSpec:
    """A source as posted: ``credentials`` is the name of a credential set in the settings, never a key."""

    uri: str
    format: SourceFormat | None = None
    id_field: str = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None
    credentials: str | None = None
    delete_missing: bool = False

    def params(self) -> dict[str, Any]:
        """Return the spec as a job's ``params["source"]``."""
        out = asdict(self)
        out["format"] = self.format.value if self.format else None
        out["metadata_fields"] = list(self.metadata_fields) if self.metadata_fields is not None else None
        return out

    @classmethod
    def of(cls, params: dict[str, Any]) -> SourceSpec:
        """Return the spec a job's ``params["source"]`` holds."""
        fields = params.get("metadata_fields")
        return cls(
            uri=params["uri"],
            format=SourceFormat(params["format"]) if params.get("format") else None,
            id_field=params.get("id_field") or "id",
            text_field=params.get("text_field") or "text",
            metadata_fields=tuple(fields) if fields is not None else None,
            credentials=params.get("credentials"),
            delete_missing=bool(params.get("delete_missing")),
        )
