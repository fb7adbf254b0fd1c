"""What reading an upload gives: its options, documents and rejected lines, and the checks of one document."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.core.errors import InvalidRequestError

MAX_ID_CHARS = 512


class UploadFormat(StrEnum):
    JSON = "json"  # one JSON array of {"id", "text", "metadata"}
    JSONL = "jsonl"  # one {"id", "text", "metadata"} object per line (NDJSON)
    CSV = "csv"  # a header with id and text columns; the other columns become metadata
    TEXT = "text"  # plain text: one document per file, or one per line
    PARQUET = "parquet"  # id and text columns; the other columns become metadata


class TextMode(StrEnum):
    FILE = "file"
    LINE = "line"


class UploadFormatError(InvalidRequestError):
    """An upload embedq cannot read at all (unknown format, a CSV without its columns, a broken envelope)."""


@dataclass(frozen=True)
class UploadOptions:
    """How to read an upload; ``format`` None means: from the file name, else from the Content-Type."""

    format: UploadFormat | None = None
    text_mode: TextMode = TextMode.FILE
    id_field: str = "id"
    text_field: str = "text"
    document_id: str | None = None  # the id of a raw (not multipart) plain-text document
    max_line_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ParsedDocument:
    external_id: str
    text: str
    metadata: dict[str, Any]
    line: int


@dataclass(frozen=True)
class RejectedLine:
    """A line (or CSV record, JSON array item, text file) that fails its document, not the upload."""

    line: int | None
    document_id: str | None
    error: str


Item = ParsedDocument | RejectedLine


def shown(text: str) -> str:
    """Return ``text`` fit for an error message stored in Postgres: NUL and lone surrogates escaped."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def shown_id(document_id: str | None) -> str | None:
    """Return a rejected document's id as stored with its error: at most MAX_ID_CHARS, no NUL."""
    return shown(document_id[:MAX_ID_CHARS]) if document_id else document_id


def check_document(external_id: Any, text: Any, metadata: Any, line: int, where: str) -> Item:
    """Return the document, or a rejection saying what is wrong with it and how to fix it."""
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)
    document_id = external_id if isinstance(external_id, str) else None
    problem = None
    if not isinstance(external_id, str) or not external_id.strip():
        problem = 'has no "id" (a non-empty string or integer)'
    elif len(external_id) > MAX_ID_CHARS or "\x00" in external_id:
        problem = f"has an id longer than {MAX_ID_CHARS} characters or with a NUL character"
    elif not isinstance(text, str):
        problem = 'has no "text" string'
    elif not text.strip():
        problem = "has an empty text"
    elif "\x00" in text:
        problem = "has a NUL character (\\u0000) in its text: strip it"
    elif not isinstance(metadata, dict):
        problem = '"metadata" is not a JSON object'
    else:
        problem = _stored_problem(external_id, text, metadata)
    if problem is not None:
        return RejectedLine(line, shown_id(document_id), f"{where} {problem}")
    return ParsedDocument(external_id, text, metadata, line)


def _stored_problem(external_id: str, text: str, metadata: dict[str, Any]) -> str | None:
    """Return why Postgres cannot store the document's metadata (NaN, Infinity, a value JSON has no form for,
    NUL), or its id, text or metadata (a lone surrogate), or None; the metadata is encoded once for all three.

    Python's JSON parser reads NaN, Infinity and 1e400; Postgres refuses them, for the whole batch they came in.
    """
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False)  # NUL is still escaped as \\u0000
    except ValueError:
        return "has NaN or Infinity (or a number beyond ±1.8e308) in its metadata: JSON numbers must be finite"
    except TypeError as exc:
        return f"has a metadata value JSON cannot hold ({exc}): convert it to a string or number"
    if "\\u0000" in encoded:
        return "has a NUL character (\\u0000) in its metadata"
    if not _valid_unicode(external_id, text, encoded):
        return "has a lone surrogate (\\ud800-\\udfff) in its id, text or metadata: send valid Unicode"
    return None


def _valid_unicode(*texts: str) -> bool:
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
