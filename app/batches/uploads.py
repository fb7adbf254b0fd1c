"""Reading a POST /v1/files multipart body as it streams: the form fields, and the file part's bytes as they come.

Nothing is buffered beyond one piece of the body: the route writes the file part's bytes to the artifact store
as they arrive, and the fields (``purpose``) may come before or after the file, as clients send them.
"""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import EmbedqError

# A form field other than the file is a short string (purpose); a longer one is refused, never accumulated.
MAX_FIELD_BYTES = 1024


class UploadError(EmbedqError):
    status_code = 400
    code = "invalid_upload"


class MultipartFile:
    """multipart/form-data with one file part (``file``) and small fields, fed as the body arrives."""

    def __init__(self, content_type: str | None) -> None:
        value, params = parse_options_header((content_type or "").encode("latin-1"))
        boundary = params.get(b"boundary")
        if value.decode("latin-1").lower() != "multipart/form-data" or not boundary:
            raise UploadError(
                "send the file as multipart/form-data with a 'file' part and a 'purpose' field "
                "(the openai client's files.create does)",
                param="file",
            )
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_parts = 0
        self._data: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._begin,
                    "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                    "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._end,
                },
            )
        except ValueError as exc:  # a boundary over 256 bytes
            raise UploadError(f"the multipart boundary is invalid ({exc})", param="file") from exc

    def feed(self, data: bytes) -> list[bytes]:
        """Return the pieces of the file part that ``data`` completed."""
        try:
            self._parser.write(data)
        except UploadError:
            raise
        except Exception as exc:  # python-multipart raises its own error types on a broken envelope
            raise UploadError(f"the multipart body is malformed ({exc})", param="file") from exc
        pieces, self._data = self._data, []
        return pieces

    def close(self) -> list[bytes]:
        """Return what the end of the body completed; raises UploadError if no file part came."""
        try:
            self._parser.finalize()
        except Exception as exc:
            raise UploadError(f"the multipart body is malformed ({exc})", param="file") from exc
        if self.file_parts != 1:
            raise UploadError(
                f"the body holds {self.file_parts} file parts: send exactly one, named 'file'", param="file"
            )
        pieces, self._data = self._data, []
        return pieces

    def _begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._text.clear()

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("utf-8", "replace")
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", "").encode("utf-8"))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name == "file":
            self._is_file = True
            self.file_parts += 1
            self.filename = (filename or b"upload.jsonl").decode("utf-8", "replace")[:512]

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._data.append(bytes(data[start:end]))
            return
        self._text.extend(data[start:end])
        if len(self._text) > MAX_FIELD_BYTES:
            raise UploadError(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes", param=self._name)

    def _end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._text.decode("utf-8", "replace")
