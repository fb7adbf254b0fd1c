"""The streaming parsers of upload bodies, one per format: JSON arrays, JSONL/NDJSON, CSV and plain text.

Each is fed the body (or one multipart file part) as it arrives and returns what each piece completed.
Memory stays bounded by one line (or one CSV record, or one text document) of at most
EMBEDQ_INGEST_MAX_LINE_BYTES, whatever the size of the upload.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, Protocol

from app.collections.upload_items import (
    Item,
    RejectedLine,
    TextMode,
    UploadFormat,
    UploadFormatError,
    UploadOptions,
    check_document,
    shown,
    shown_id,
)
from app.collections.upload_parquet import ParquetUploadParser

_BY_EXTENSION = {
    ".json": UploadFormat.JSON,
    ".jsonl": UploadFormat.JSONL,
    ".ndjson": UploadFormat.JSONL,
    ".csv": UploadFormat.CSV,
    ".txt": UploadFormat.TEXT,
    ".text": UploadFormat.TEXT,
    ".md": UploadFormat.TEXT,
    ".parquet": UploadFormat.PARQUET,
    ".pq": UploadFormat.PARQUET,
}
_BY_MEDIA_TYPE = {
    "application/json": UploadFormat.JSON,
    "application/x-ndjson": UploadFormat.JSONL,
    "application/ndjson": UploadFormat.JSONL,
    "application/jsonl": UploadFormat.JSONL,
    "application/x-jsonlines": UploadFormat.JSONL,
    "text/csv": UploadFormat.CSV,
    "text/plain": UploadFormat.TEXT,
    "text/markdown": UploadFormat.TEXT,
    "application/vnd.apache.parquet": UploadFormat.PARQUET,
}


class Parser(Protocol):
    """Fed the bytes of a body as they arrive; returns the documents and rejections each piece completed."""

    def feed(self, data: bytes) -> list[Item]: ...

    def close(self) -> Iterable[Item]: ...


class _Lines:
    """Splits bytes into lines; a line over the limit becomes None (with its number) and is skipped."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max = max_line_bytes
        self.buffer = bytearray()
        self.number = 0
        self.skipping = False

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes | None]]:
        self.buffer += data
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end < 0:
                break
            too_long = end - start > self.max  # fed in one piece, as a source's shard is, a line is whole here
            line = b"" if too_long else bytes(self.buffer[start:end])
            start = end + 1
            self.number += 1
            if self.skipping or too_long:
                self.skipping = False
                yield self.number, None
            else:
                yield self.number, line.removesuffix(b"\r")
        del self.buffer[:start]
        if len(self.buffer) > self.max and not self.skipping:
            self.skipping = True
        if self.skipping:
            self.buffer.clear()

    def close(self) -> Iterator[tuple[int, bytes | None]]:
        if self.skipping:
            self.number += 1
            yield self.number, None
        elif self.buffer:
            self.number += 1
            yield self.number, bytes(self.buffer).removesuffix(b"\r")
        self.buffer.clear()
        self.skipping = False


def _decode(raw: bytes, where: str) -> str | RejectedLine:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RejectedLine(
            None, None, f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}): re-encode it"
        )


def _too_long(line: int, where: str, limit: int) -> RejectedLine:
    return RejectedLine(line, None, f"{where} is longer than {limit} bytes (EMBEDQ_INGEST_MAX_LINE_BYTES): split it")


def _from_object(obj: Any, options: UploadOptions, line: int, where: str) -> Item:
    if not isinstance(obj, dict):
        return RejectedLine(line, None, f"{where} is a JSON {type(obj).__name__}, not an object with id and text")
    extra = {k: v for k, v in obj.items() if k not in (options.id_field, options.text_field, "metadata")}
    metadata = obj.get("metadata", {})
    if isinstance(metadata, dict):
        metadata = {**extra, **metadata}
    return check_document(obj.get(options.id_field), obj.get(options.text_field), metadata, line, where)


class _JsonLinesParser:
    def __init__(self, options: UploadOptions, label: str) -> None:
        self.options = options
        self.label = label
        self.lines = _Lines(options.max_line_bytes)

    def feed(self, data: bytes) -> list[Item]:
        return [item for n, raw in self.lines.feed(data) if (item := self._line(n, raw)) is not None]

    def close(self) -> list[Item]:
        return [item for n, raw in self.lines.close() if (item := self._line(n, raw)) is not None]

    def _line(self, number: int, raw: bytes | None) -> Item | None:
        where = f"{self.label}line {number}"
        if raw is None:
            return _too_long(number, where, self.options.max_line_bytes)
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as editors save files (and CSV's)
        if not raw.strip():
            return None
        text = _decode(raw, where)
        if isinstance(text, RejectedLine):
            return RejectedLine(number, None, text.error)
        try:
            obj = json.loads(text)
        except ValueError as exc:
            return RejectedLine(number, None, f"{where} is not valid JSON ({exc})")
        return _from_object(obj, self.options, number, where)


class _JsonArrayParser:
    """Reads ``[{...}, {...}]`` one element at a time: each element is decoded once it has fully arrived."""

    def __init__(self, options: UploadOptions, label: str) -> None:
        self.options = options
        self.label = label
        # Incremental: a multi-byte character may straddle two pieces of the body.
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.state = "start"  # start -> item -> comma -> item ... -> end
        self.count = 0
        self.decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[Item]:
        return self._parse(self._decode(data, final=False), final=False)

    def close(self) -> list[Item]:
        items = self._parse(self._decode(b"", final=True), final=True)
        if self.state != "end":
            raise UploadFormatError(
                f"{self.label}the JSON array is not closed after item {self.count}: send a whole array, or JSONL"
            )
        return items

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            return self.utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            raise UploadFormatError(f"{self.label}the JSON body is not valid UTF-8 ({exc}): re-encode it") from exc

    def _parse(self, text: str, *, final: bool) -> list[Item]:
        self.text = self.text[self.pos :] + text
        self.pos = 0
        items: list[Item] = []
        while True:
            self._skip_space()
            if self.pos >= len(self.text) or self.state == "end":
                if self.state == "end" and self.text[self.pos :].strip():
                    raise UploadFormatError(f"{self.label}the JSON body has data after its array")
                return items
            char = self.text[self.pos]
            if self.state == "start":
                self._expect(char, "[", "a JSON array of documents")
                self.state = "item"
            elif self.state == "comma":
                if char == "]":
                    self.pos += 1
                    self.state = "end"
                    continue
                self._expect(char, ",", "',' or ']' between array items")
                self.state = "item"
            else:
                if char == "]" and self.count == 0:
                    self.pos += 1
                    self.state = "end"
                    continue
                item = self._item(final)
                if item is None:
                    return items
                items.append(item)

    def _item(self, final: bool) -> Item | None:
        try:
            obj, end = self.decoder.raw_decode(self.text, self.pos)
        except ValueError as exc:
            incomplete = len(self.text) - self.pos
            if not final and incomplete <= self.options.max_line_bytes:
                return None  # wait for the rest of this element
            raise UploadFormatError(
                f"{self.label}the JSON array is malformed at item {self.count + 1} ({exc}); items before it "
                "were read, the rest was not: fix the array or send JSONL, where one bad line fails only itself"
            ) from exc
        self.count += 1
        self.pos = end
        self.state = "comma"
        return _from_object(obj, self.options, self.count, f"{self.label}item {self.count}")

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def _expect(self, char: str, want: str, what: str) -> None:
        if char != want:
            raise UploadFormatError(f"{self.label}expected {what} at item {self.count + 1}, found {char!r}")
        self.pos += 1


class _CsvParser:
    """One record per line, or several lines while a quoted field is open (its quotes are still unbalanced)."""

    def __init__(self, options: UploadOptions, label: str) -> None:
        self.options = options
        self.label = label
        self.lines = _Lines(options.max_line_bytes)
        self.header: list[str] | None = None
        self.record = bytearray()
        self.record_line = 0
        csv.field_size_limit(max(csv.field_size_limit(), options.max_line_bytes))

    def feed(self, data: bytes) -> list[Item]:
        return self._records(self.lines.feed(data), final=False)

    def close(self) -> list[Item]:
        items = self._records(self.lines.close(), final=True)
        if self.header is None:
            raise UploadFormatError(f"{self.label}the CSV has no header line: its first line must name the columns")
        return items

    def _records(self, lines: Iterator[tuple[int, bytes | None]], *, final: bool) -> list[Item]:
        items: list[Item] = []
        for number, raw in lines:
            if raw is None:
                items.append(_too_long(number, f"{self.label}line {number}", self.options.max_line_bytes))
                self.record.clear()
                continue
            if not self.record:
                self.record_line = number
            elif len(self.record) + len(raw) > self.options.max_line_bytes:
                where = f"{self.label}record at line {self.record_line}"
                items.append(_too_long(self.record_line, where, self.options.max_line_bytes))
                self.record.clear()
                self.record_line = number
            self.record += raw + b"\n"
            if self.record.count(b'"') % 2 == 0:
                item = self._record(bytes(self.record), self.record_line)
                self.record.clear()
                if item is not None:
                    items.append(item)
        if final and self.record:
            where = f"{self.label}record at line {self.record_line}"
            items.append(RejectedLine(self.record_line, None, f"{where} has an unclosed quote"))
            self.record.clear()
        return items

    def _record(self, raw: bytes, number: int) -> Item | None:
        where = f"{self.label}line {number}"
        text = _decode(raw, where)
        if isinstance(text, RejectedLine):
            return RejectedLine(number, None, text.error)
        if not text.strip():
            return None
        try:
            row = next(csv.reader([text.rstrip("\r\n")]))
        except csv.Error as exc:
            return RejectedLine(number, None, f"{where} is not valid CSV ({exc})")
        if self.header is None:
            self._set_header(row)
            return None
        if len(row) != len(self.header):
            return RejectedLine(number, None, f"{where} has {len(row)} fields; the header has {len(self.header)}")
        values = dict(zip(self.header, row, strict=True))
        metadata = {k: v for k, v in values.items() if k not in (self.options.id_field, self.options.text_field)}
        return check_document(
            values.get(self.options.id_field), values.get(self.options.text_field), metadata, number, where
        )

    def _set_header(self, row: list[str]) -> None:
        header = [name.strip().lstrip("\ufeff") for name in row]
        missing = [c for c in (self.options.id_field, self.options.text_field) if c not in header]
        if missing:
            raise UploadFormatError(
                f"{self.label}the CSV header ({', '.join(header)}) has no {' and no '.join(missing)} column: "
                "name them so, or pass ?id_field=...&text_field=..."
            )
        if len(set(header)) != len(header):
            raise UploadFormatError(f"{self.label}the CSV header names a column twice: {', '.join(header)}")
        self.header = header


class _TextParser:
    """Plain text: the whole part is one document (``file`` mode), or every non-blank line is one."""

    def __init__(self, options: UploadOptions, label: str, name: str | None) -> None:
        self.options = options
        self.label = label
        self.name = name
        self.lines = _Lines(options.max_line_bytes)
        self.whole = bytearray()
        self.too_big = False

    def feed(self, data: bytes) -> list[Item]:
        if self.options.text_mode is TextMode.LINE:
            return [item for n, raw in self.lines.feed(data) if (item := self._line(n, raw)) is not None]
        if not self.too_big:
            self.whole += data
            if len(self.whole) > self.options.max_line_bytes:
                self.too_big = True
                self.whole.clear()
        return []

    def close(self) -> list[Item]:
        if self.options.text_mode is TextMode.LINE:
            return [item for n, raw in self.lines.close() if (item := self._line(n, raw)) is not None]
        document_id = self.name
        where = f"{self.label}the text document"
        if self.too_big:
            too_big = f"{where} is larger than {self.options.max_line_bytes} bytes"
            return [RejectedLine(1, shown_id(document_id), too_big)]
        text = _decode(bytes(self.whole), where)
        if isinstance(text, RejectedLine):
            return [RejectedLine(1, shown_id(document_id), text.error)]
        return [check_document(document_id, text, {}, 1, where)]

    def _line(self, number: int, raw: bytes | None) -> Item | None:
        where = f"{self.label}line {number}"
        if raw is None:
            return _too_long(number, where, self.options.max_line_bytes)
        if not raw.strip():
            return None
        document_id = f"{self.name}:{number}"
        text = _decode(raw, where)
        if isinstance(text, RejectedLine):
            return RejectedLine(number, shown_id(document_id), text.error)
        return check_document(document_id, text, {}, number, where)


def format_of(options: UploadOptions, filename: str | None, media_type: str | None) -> UploadFormat:
    """Return the format ``options`` name, else the file name's extension says, else the media type's."""
    if options.format is not None:
        return options.format
    if filename:
        found = _BY_EXTENSION.get(PurePosixPath(filename).suffix.lower())
        if found is not None:
            return found
    if media_type and media_type in _BY_MEDIA_TYPE:
        return _BY_MEDIA_TYPE[media_type]
    raise UploadFormatError(
        f"cannot tell the format of {shown(filename or 'the upload')} (Content-Type {media_type or 'missing'}): pass "
        f"?format= one of {', '.join(f.value for f in UploadFormat)}, or a file name with a known extension",
        param="format",
    )


def parser_for(fmt: UploadFormat, options: UploadOptions, filename: str | None) -> Parser:
    """Return a fresh parser of ``fmt`` for the body, or for the multipart file part called ``filename``."""
    label = f"{shown(filename)}: " if filename else ""
    if fmt is UploadFormat.JSON:
        return _JsonArrayParser(options, label)
    if fmt is UploadFormat.JSONL:
        return _JsonLinesParser(options, label)
    if fmt is UploadFormat.CSV:
        return _CsvParser(options, label)
    if fmt is UploadFormat.PARQUET:
        return ParquetUploadParser(options, label)
    name = PurePosixPath(filename).name if filename else options.document_id
    if options.text_mode is TextMode.FILE and not name:
        raise UploadFormatError(
            "a raw plain-text upload is one document and needs an id: pass ?document_id=..., upload it as a "
            "multipart file (its file name becomes the id), or pass ?text_mode=line&document_id=... for one "
            "document per line",
            param="document_id",
        )
    if not name:  # ids <name>:<line>: without a name two uploads' lines would overwrite each other's documents
        raise UploadFormatError(
            "a raw plain-text upload by line needs ?document_id=...: its lines become the documents "
            "<document_id>:<line number>, so one file's lines never replace another's (a multipart file part "
            "uses its file name)",
            param="document_id",
        )
    return _TextParser(options, label, name)
