"""Shards of an object, and the documents one shard holds.

Parquet objects split into runs of row groups, JSONL and CSV objects into byte ranges, each of about
EMBEDQ_SOURCE_SHARD_TARGET_BYTES; smaller objects and plain text are one shard. A byte range holds the
lines that *begin* in it: a range starting mid-line skips to the next newline (that line is the previous
range's), and one ending mid-line reads through to the line's end. A CSV range after the first is read
with the file's header line in front. (A quoted CSV field spanning lines is only safe in a file read whole.)

An object that breaks mid-way (a truncated file, a store that stops answering) keeps what was read before
the break; ``ShardRead.error`` says where and why, for the job's errors file, and ``ShardRead.unavailable``
whether the store did not answer (``app.sources.store_faults``: the shard is then read again later, whole).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from app.collections.upload_items import (
    Item,
    ParsedDocument,
    RejectedLine,
    TextMode,
    UploadFormat,
    UploadOptions,
    shown_id,
)
from app.collections.upload_parquet import columns_to_read, missing_columns, row_items
from app.collections.upload_parsers import parser_for
from app.core.config import Settings
from app.core.store_outages import unavailable
from app.models.source import ShardKind
from app.sources.listing import ListedObject, object_signature, same_version
from app.sources.spec import SourceFormat, SourceSpec

# Bytes read past a range's end per request while looking for the end of its last line.
_TAIL_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class ShardPlan:
    """One shard of an object: row groups [start, stop), the lines beginning in bytes [start, stop), or whole."""

    kind: ShardKind
    start: int
    stop: int

    def describe(self) -> str:
        """Return the part of its object the shard is, for an error: its row groups, its bytes, or the file."""
        if self.kind is ShardKind.ROW_GROUPS:
            return f"row groups {self.start}-{self.stop - 1}"
        if self.kind is ShardKind.BYTES:
            return f"bytes {self.start}-{self.stop}"
        return "the file"


@dataclass(frozen=True)
class ShardRead:
    """What a shard held: its documents and rejected rows, and why it broke off (None: read to its end)."""

    items: list[Item]
    error: str | None = None
    unavailable: bool = False  # the break was the store not answering: reading again later may succeed


def plan_object(fs: fsspec.AbstractFileSystem, obj: ListedObject, settings: Settings) -> list[ShardPlan]:
    """Return an object's shards; a Parquet object's footer is read to find its row groups."""
    target = settings.source_shard_target_bytes
    if obj.format is SourceFormat.PARQUET:
        with fs.open(obj.path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            sizes = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
        return _group_row_groups(sizes, target)
    if obj.format is SourceFormat.TEXT or obj.size <= target:
        return [ShardPlan(ShardKind.WHOLE, 0, obj.size)]
    return [ShardPlan(ShardKind.BYTES, s, min(s + target, obj.size)) for s in range(0, obj.size, target)]


def _group_row_groups(sizes: list[int], target: int) -> list[ShardPlan]:
    """Return runs of consecutive row groups of at most ``target`` bytes (at least one group each)."""
    shards: list[ShardPlan] = []
    start, size = 0, 0
    for group, group_size in enumerate(sizes):
        if group > start and size + group_size > target:
            shards.append(ShardPlan(ShardKind.ROW_GROUPS, start, group))
            start, size = group, 0
        size += group_size
    if sizes:
        shards.append(ShardPlan(ShardKind.ROW_GROUPS, start, len(sizes)))
    return shards


class _Changed(Exception):
    """The object is no longer the version the job listed."""


@contextmanager
def _opened(fs: fsspec.AbstractFileSystem, path: str, planned: dict | None, **kwargs: int) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading; raise _Changed unless it is still the version whose signature is ``planned``.

    s3fs pins every range read of a handle to the ETag it saw at open (a later change fails the read), so
    checking that ETag here makes the whole shard one version: the planned one. An http(s) object is checked
    by a HEAD at open (ETag, else Last-Modified and size); its range reads are not pinned.
    """
    with fs.open(path, "rb", **kwargs) as handle:
        if planned is not None:
            current = object_signature(getattr(handle, "details", None) or {})
            if current["etag"] is None and current["mtime"] is None:  # an http(s) handle knows only the size
                current = object_signature(fs.info(path))
            if not same_version(planned, current):
                raise _Changed
        yield handle


def read_shard(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, fmt: SourceFormat, shard: ShardPlan, spec: SourceSpec,
    relative_name: str, settings: Settings, planned: dict | None = None,
) -> ShardRead:  # fmt: skip
    """Return the documents of one shard of the object at ``path`` (its ``uri`` names it in errors).

    With ``planned``, the signature the object was listed with, a shard of an object changed since then reads
    nothing and says so: its byte ranges or row groups were cut from the old version.
    """
    try:
        if fmt is SourceFormat.PARQUET:
            return _read_row_groups(fs, path, uri, shard, spec, planned)
        return _read_lines(fs, path, uri, fmt, shard, spec, relative_name, settings, planned)
    except _Changed:
        return ShardRead([], f"{uri}: changed since the job listed it; sync the source again to read it as it is now")
    except Exception as exc:  # OSError, pyarrow's, a CSV without its columns, the store's own (botocore, aiohttp)
        return ShardRead([], f"{uri}: {shard.describe()} cannot be read ({_reason(exc)})", unavailable(exc))


def _read_row_groups(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, shard: ShardPlan, spec: SourceSpec, planned: dict | None
) -> ShardRead:
    items: list[Item] = []
    with _opened(fs, path, planned) as handle:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        missing = missing_columns(schema, spec.id_field, spec.text_field, spec.metadata_fields)
        if missing:
            return ShardRead([], f"{uri}: the Parquet file has no {' and no '.join(missing)} column")
        columns = columns_to_read(schema, spec.id_field, spec.text_field, spec.metadata_fields)
        metadata = parquet.metadata
        first = 1 + sum(metadata.row_group(g).num_rows for g in range(shard.start))
        for group in range(shard.start, shard.stop):
            try:
                table = parquet.read_row_group(group, columns=columns)
            except (OSError, pa.ArrowException) as exc:
                where = f"row group {group} (rows {first} on)"
                kept = f"{uri}: {where} cannot be read ({_reason(exc)}); the rows before it were kept"
                return ShardRead(items, kept, unavailable(exc))
            items += row_items(table, spec.id_field, spec.text_field, first, f"{uri}: ")
            first += table.num_rows
    return ShardRead(items)


def _read_lines(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, fmt: SourceFormat, shard: ShardPlan, spec: SourceSpec,
    relative_name: str, settings: Settings, planned: dict | None,
) -> ShardRead:  # fmt: skip
    options = UploadOptions(
        format=UploadFormat(fmt.value),
        text_mode=TextMode.FILE,
        id_field=spec.id_field,
        text_field=spec.text_field,
        max_line_bytes=settings.ingest_max_line_bytes,
        document_id=relative_name,  # a plain-text object's id: its whole path under the base, not its file name
    )
    if fmt is SourceFormat.TEXT and shard.stop > settings.ingest_max_line_bytes:  # one document: never read it all
        limit = settings.ingest_max_line_bytes
        too_big = f"the text document is larger than {limit} bytes (EMBEDQ_INGEST_MAX_LINE_BYTES): split it"
        return ShardRead([RejectedLine(1, shown_id(relative_name), f"{uri}: {too_big}")])
    label = uri if shard.start == 0 else f"{uri} (from byte {shard.start})"
    parser = parser_for(options.format, options, label if fmt is not SourceFormat.TEXT else None)
    with _opened(fs, path, planned, block_size=min(settings.source_shard_target_bytes, 8 * 1024 * 1024)) as handle:
        header = handle.readline() if fmt is SourceFormat.CSV and shard.start > 0 else b""
        try:
            data = _range_lines(handle, shard, settings.ingest_max_line_bytes)
        except OSError as exc:
            return ShardRead([], f"{uri}: {shard.describe()} cannot be read ({_reason(exc)})", unavailable(exc))
    items = [*parser.feed(header + data), *parser.close()] if header or data else [*parser.close()]
    if shard.start > 0:  # line numbers count from the range's start, not the file's: the label says so
        items = [_without_line(item) for item in items]
    return ShardRead(_selected(items, spec.metadata_fields))


def _range_lines(handle: IO[bytes], shard: ShardPlan, max_line_bytes: int) -> bytes:
    """Return the bytes of the lines that begin in the shard's range.

    The last line is read on past the range's end to its newline, but no further than ``max_line_bytes``: a
    longer line is refused by the parser anyway, and an object with no newline is not read whole.
    """
    if shard.kind is ShardKind.WHOLE:
        handle.seek(0)
        return handle.read()
    begin = max(shard.start - 1, 0)
    handle.seek(begin)
    data = handle.read(shard.stop - begin)
    if shard.start > 0:
        # Byte start-1 is read too: if it is a newline, the range begins on a line's first byte.
        cut = data.find(b"\n")
        if cut < 0:
            return b""  # one line covers the whole range: it belongs to an earlier shard
        data = data[cut + 1 :]
    tail = 0
    while data and not data.endswith(b"\n") and tail <= max_line_bytes:
        more = handle.read(_TAIL_READ_BYTES)
        tail += len(more)
        if not more:
            break
        cut = more.find(b"\n")
        data += more if cut < 0 else more[: cut + 1]
        if cut >= 0:
            break
    return data


def _selected(items: Iterable[Item], fields: tuple[str, ...] | None) -> list[Item]:
    """Keep only the named metadata fields, when the source names them."""
    if fields is None:
        return list(items)
    keep = set(fields)
    return [
        replace(i, metadata={k: v for k, v in i.metadata.items() if k in keep}) if isinstance(i, ParsedDocument) else i
        for i in items
    ]


def _without_line(item: Item) -> Item:
    return replace(item, line=None) if isinstance(item, RejectedLine) else item


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
