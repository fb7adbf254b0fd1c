"""Reading document uploads as they stream: a raw body in one format, or a multipart body of files.

An ``UploadReader`` is fed the body as it arrives and returns what each piece completed: documents, and
rejections of single lines (invalid JSON, missing text, bad UTF-8, ...) that fail that document only.
Memory stays bounded by one line (or one CSV record, or one text document) of at most
EMBEDQ_INGEST_MAX_LINE_BYTES, whatever the size of the upload.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.collections.upload_items import Item, UploadFormatError, UploadOptions
from app.collections.upload_parsers import Parser, format_of, parser_for
from app.core.multipart import MULTIPART, MultipartStream, disposition, media_type


class _Multipart:
    """multipart/form-data, streamed: each file part is parsed by the parser its file name calls for."""

    def __init__(self, boundary: bytes, options: UploadOptions) -> None:
        self.options = options
        self.items: list[Item] = []
        self.files = 0
        self.stream = MultipartStream(boundary, self._open, error=UploadFormatError)

    def feed(self, data: bytes) -> list[Item]:
        self.stream.write(data)
        return self._take()

    def close(self) -> list[Item]:
        self.stream.close()
        if self.files == 0:
            raise UploadFormatError("the multipart body has no file part: send the documents as a file field")
        return self._take()

    def _take(self) -> list[Item]:
        items = self.items.copy()
        self.items.clear()  # the file parts' readers hold this list
        return items

    def _open(self, headers: dict[str, str]) -> _FilePart | None:
        _, filename = disposition(headers)
        if filename is None:
            return None  # a plain form field: options travel as query parameters
        content_type, _ = media_type(headers.get("content-type"))
        self.files += 1
        parser = parser_for(format_of(self.options, filename, content_type), self.options, filename)
        return _FilePart(parser, self.items)


class _FilePart:
    def __init__(self, parser: Parser, items: list[Item]) -> None:
        self.parser, self.items = parser, items

    def data(self, piece: bytes) -> None:
        self.items.extend(self.parser.feed(piece))

    def end(self) -> None:
        self.items.extend(self.parser.close())


class UploadReader:
    """Documents from an upload's bytes, fed as they arrive; raw bodies and multipart alike."""

    def __init__(self, content_type: str | None, options: UploadOptions) -> None:
        kind, params = media_type(content_type)
        if kind == MULTIPART:
            boundary = params.get(b"boundary")
            if not boundary:
                raise UploadFormatError("multipart/form-data without a boundary parameter in Content-Type")
            self._inner: Parser = _Multipart(boundary, options)
        else:
            self._inner = parser_for(format_of(options, None, kind), options, None)

    def feed(self, data: bytes) -> list[Item]:
        """Return the documents and rejections that ``data`` completed."""
        return self._inner.feed(data) if data else []

    def close(self) -> Iterable[Item]:
        """Return what the end of the body completed; raises UploadFormatError if it ends mid-structure."""
        return self._inner.close()
