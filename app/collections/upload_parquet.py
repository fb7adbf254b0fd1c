"""Parquet documents: rows of an id column, a text column and metadata columns, read a row group at a time.

Used by uploads (``format=parquet``: the body is spooled to a temporary file, since Parquet's footer comes
last) and by sources, whose shards are row groups of Parquet objects (``app.sources.reading``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from app.collections.upload_items import Item, RejectedLine, UploadFormatError, UploadOptions, check_document

# Bytes of an uploaded Parquet body kept in memory before the spool moves to a temporary file.
_SPOOL_MEMORY_BYTES = 8 * 1024 * 1024


def missing_columns(
    schema: pa.Schema, id_field: str, text_field: str, metadata_fields: Sequence[str] | None
) -> list[str]:
    """Return the named columns a Parquet schema lacks."""
    wanted = [id_field, text_field, *(metadata_fields or ())]
    return [c for c in dict.fromkeys(wanted) if c not in schema.names]


def columns_to_read(
    schema: pa.Schema, id_field: str, text_field: str, metadata_fields: Sequence[str] | None
) -> list[str]:
    """Return the columns to read: id, text, and the metadata ones (all others when none are named)."""
    extra = [n for n in schema.names if n not in (id_field, text_field)] if metadata_fields is None else metadata_fields
    return list(dict.fromkeys([id_field, text_field, *extra]))


def row_items(table: pa.Table, id_field: str, text_field: str, first_row: int, label: str) -> Iterator[Item]:
    """Return a table's rows as documents (or rejections), numbered from ``first_row`` (1-based) in their file."""
    for number, row in enumerate(table.to_pylist(), start=first_row):
        metadata = {k: _jsonable(v) for k, v in row.items() if k not in (id_field, text_field)}
        yield check_document(row.get(id_field), row.get(text_field), metadata, number, f"{label}row {number}")


def _jsonable(value: Any) -> Any:
    """Return a Parquet value as JSON that Postgres stores: dates as ISO text, durations as seconds, NaN as null,
    bytes as hex (anything else JSON has no form for fails its row, in ``check_document``)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


class ParquetUploadParser:
    """An uploaded Parquet file: spooled as it arrives, read row group by row group when it ends."""

    def __init__(self, options: UploadOptions, label: str) -> None:
        self.options = options
        self.label = label
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115

    def feed(self, data: bytes) -> list[Item]:
        self.spool.write(data)
        return []

    def close(self) -> Iterable[Item]:
        self.spool.seek(0)
        try:
            parquet = pq.ParquetFile(self.spool)
        except (pa.ArrowException, OSError) as exc:
            self.spool.close()
            raise UploadFormatError(f"{self.label}not a readable Parquet file ({exc})") from exc
        missing = missing_columns(parquet.schema_arrow, self.options.id_field, self.options.text_field, None)
        if missing:
            self.spool.close()
            raise UploadFormatError(
                f"{self.label}the Parquet file has no {' and no '.join(missing)} column (it has "
                f"{', '.join(parquet.schema_arrow.names)}): pass ?id_field=...&text_field=..."
            )
        return self._rows(parquet)

    def _rows(self, parquet: pq.ParquetFile) -> Iterator[Item]:
        columns = columns_to_read(parquet.schema_arrow, self.options.id_field, self.options.text_field, None)
        first = 1
        try:
            for group in range(parquet.num_row_groups):
                try:
                    table = parquet.read_row_group(group, columns=columns)
                except (pa.ArrowException, OSError) as exc:
                    rows = parquet.metadata.row_group(group).num_rows
                    where = f"{self.label}row group {group} (rows {first}-{first + rows - 1})"
                    yield RejectedLine(None, None, f"{where} cannot be read ({exc})")
                    first += rows
                    continue
                yield from row_items(table, self.options.id_field, self.options.text_field, first, self.label)
                first += table.num_rows
        finally:
            self.spool.close()
