"""Reading document uploads as they stream: a raw body in one format, or a multipart body of files.

An ``UploadReader`` is fed the body as it arrives and returns what each piece completed: documents, and
rejections of single lines (invalid JSON, missing text, bad UTF-8, ...) that fail that document only.
Memory stays bounded by one line (or one CSV record, or one text document) of at most
EMBEDQ_INGEST_MAX_LINE_BYTES, whatever the size of the upload.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from app.collections.upload_items import Item, UploadFormatError, UploadOptions
from app.collections.upload_parsers import Parser, format_of, parser_for


def _media_type(content_type: str | None) -> tuple[str, dict[bytes, bytes]]:
    if not content_type:
        return "", {}
    value, params = parse_options_header(content_type.encode("latin-1"))
    return value.decode("latin-1").lower(), params


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    parser: Parser | None = None


class _Multipart:
    """multipart/form-data, streamed: each file part is parsed by the parser its file name calls for."""

    def __init__(self, boundary: bytes, options: UploadOptions) -> None:
        self.options = options
        self.items: list[Item] = []
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.files = 0
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self.header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, data: bytes) -> list[Item]:
        try:
            self.parser.write(data)
        except UploadFormatError:
            raise
        except Exception as exc:  # python-multipart raises its own error types on a broken envelope
            raise UploadFormatError(f"the multipart body is malformed ({exc})") from exc
        items, self.items = self.items, []
        return items

    def close(self) -> list[Item]:
        self.parser.finalize()
        if self.files == 0:
            raise UploadFormatError("the multipart body has no file part: send the documents as a file field")
        items, self.items = self.items, []
        return items

    def _begin(self) -> None:
        self.part = _Part()

    def _header_end(self) -> None:
        self.part.headers[self.header_field.decode("latin-1").lower()] = self.header_value.decode("utf-8", "replace")
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        _, params = _media_type(self.part.headers.get("content-disposition"))
        filename = params.get(b"filename")
        if filename is None:
            return  # a plain form field: options travel as query parameters
        name = filename.decode("utf-8", "replace")
        media_type, _ = _media_type(self.part.headers.get("content-type"))
        fmt = format_of(self.options, name, media_type)
        self.part.parser = parser_for(fmt, self.options, name)
        self.files += 1

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.part.parser is not None:
            self.items.extend(self.part.parser.feed(data[start:end]))

    def _end(self) -> None:
        if self.part.parser is not None:
            self.items.extend(self.part.parser.close())


class UploadReader:
    """Documents from an upload's bytes, fed as they arrive; raw bodies and multipart alike."""

    def __init__(self, content_type: str | None, options: UploadOptions) -> None:
        media_type, params = _media_type(content_type)
        if media_type == "multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise UploadFormatError("multipart/form-data without a boundary parameter in Content-Type")
            try:
                self._inner: Parser = _Multipart(boundary, options)
            except ValueError as exc:  # python-multipart refuses a boundary over 256 bytes
                raise UploadFormatError(f"the multipart boundary is invalid ({exc})") from exc
        else:
            self._inner = parser_for(format_of(options, None, media_type), options, None)

    def feed(self, data: bytes) -> list[Item]:
        """Return the documents and rejections that ``data`` completed."""
        return self._inner.feed(data) if data else []

    def close(self) -> Iterable[Item]:
        """Return what the end of the body completed; raises UploadFormatError if it ends mid-structure."""
        return self._inner.close()
