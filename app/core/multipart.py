"""A multipart/form-data body read as it streams: each part's headers, then its bytes, piece by piece.

The envelope (boundaries, part headers) is read here, once, for every route that streams a multipart body
(POST /v1/files, document uploads); what a part's bytes mean is the route's. The fine-tuning routes, which
take Starlette's parsed form, run it beside Starlette's parser only to check the envelope's end. Nothing is
buffered beyond one piece of the body. A body that ends before its closing boundary was cut off, and is
refused rather than read as complete: the part it ended in never ended, so its last bytes (held back in
case they began a boundary) would be lost without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

MULTIPART = "multipart/form-data"


class MultipartEnvelopeError(ValueError):
    """The body is not well-formed multipart; the message says what is wrong with it."""


class PartReader(Protocol):
    """What a route reads one part with: its bytes as they come, then its end."""

    def data(self, piece: bytes) -> None: ...
    def end(self) -> None: ...


PartOpener = Callable[[dict[str, str]], PartReader | None]
"""Given a part's headers (names lower-cased, values as Latin-1 strings of their bytes), returns its reader, or
None to skip the part's bytes."""


def media_type(content_type: str | None) -> tuple[str, dict[bytes, bytes]]:
    """Return a Content-Type's media type, lower-cased, and its parameters; ("", {}) for none."""
    if not content_type:
        return "", {}
    value, params = parse_options_header(content_type.encode("latin-1"))
    return value.decode("latin-1").lower(), params


def disposition(headers: dict[str, str]) -> tuple[str | None, str | None]:
    """Return a part's form-field name and file name from its Content-Disposition (None where absent), read as
    UTF-8 (what browsers and HTTP clients send), a byte that is not UTF-8 as U+FFFD."""
    _, params = media_type(headers.get("content-disposition"))
    name, filename = params.get(b"name"), params.get(b"filename")
    return (
        name.decode("utf-8", "replace") if name is not None else None,
        filename.decode("utf-8", "replace") if filename is not None else None,
    )


class MultipartStream:
    """A multipart body fed as it arrives; each part goes to the reader ``open_part`` returns for it.

    Errors a part reader raises pass through unchanged; a broken envelope raises ``error(message)``, the
    route's own 4xx (MultipartEnvelopeError by default).
    """

    def __init__(
        self, boundary: bytes, open_part: PartOpener, error: Callable[[str], Exception] = MultipartEnvelopeError
    ) -> None:
        self._open_part = open_part
        self._error = error
        self._boundary = boundary.decode("latin-1")
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._part: PartReader | None = None
        self.parts = 0
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._begin,
                    "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                    "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": lambda d, s, e: self._part.data(bytes(d[s:e])) if self._part else None,
                    "on_part_end": self._end,
                },
            )
        except ValueError as exc:  # a boundary over 256 bytes
            raise error(f"the multipart boundary is invalid ({exc})") from exc

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise self._error(f"the multipart body is malformed ({exc})") from exc

    def close(self) -> None:
        """Check that the body ended with its closing boundary (``--<boundary>--``)."""
        if self._parser.state != MultipartState.END:
            where = f"inside part {self.parts}" if self.parts else "before its first part"
            raise self._error(
                f"the multipart body ended {where}, without its closing boundary '--{self._boundary}--': "
                "the upload was cut off or built wrong; send the whole body again"
            )

    def _begin(self) -> None:
        self._headers = {}
        self._part = None
        self.parts += 1

    def _header_end(self) -> None:
        # Latin-1 keeps the bytes as they came (any byte decodes, and encodes back the same): the values are
        # parsed as bytes by media_type, and names read as UTF-8 by disposition.
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._part = self._open_part(self._headers)

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            part.end()
