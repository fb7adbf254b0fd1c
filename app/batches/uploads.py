"""Reading a POST /v1/files multipart body as it streams: the form fields, and the file part's bytes as they come.

Nothing is buffered beyond one piece of the body: the route writes the file part's bytes to the artifact store
as they arrive, and the fields (``purpose``) may come before or after the file, as clients send them.
"""

from __future__ import annotations

from functools import partial

from app.core.errors import EmbedqError
from app.core.multipart import MULTIPART, MultipartStream, disposition, media_type

# A form field other than the file is a short string (purpose); a longer one is refused, never accumulated.
MAX_FIELD_BYTES = 1024


class UploadError(EmbedqError):
    status_code = 400
    code = "invalid_upload"


class MultipartFile:
    """multipart/form-data with one file part (``file``) and small fields, fed as the body arrives."""

    def __init__(self, content_type: str | None) -> None:
        value, params = media_type(content_type)
        boundary = params.get(b"boundary")
        if value != MULTIPART or not boundary:
            raise UploadError(
                "send the file as multipart/form-data with a 'file' part and a 'purpose' field "
                "(the openai client's files.create does)",
                param="file",
            )
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_parts = 0
        self._data: list[bytes] = []
        self._stream = MultipartStream(boundary, self._open, error=partial(UploadError, param="file"))

    def feed(self, data: bytes) -> list[bytes]:
        """Return the pieces of the file part that ``data`` completed."""
        self._stream.write(data)
        pieces = self._data.copy()
        self._data.clear()  # the file part's reader holds this list
        return pieces

    def close(self) -> list[bytes]:
        """Return what the end of the body completed; raises UploadError if the body was cut off or held no
        file part."""
        self._stream.close()
        if self.file_parts != 1:
            raise UploadError(
                f"the body holds {self.file_parts} file parts: send exactly one, named 'file'", param="file"
            )
        pieces = self._data.copy()
        self._data.clear()  # the file part's reader holds this list
        return pieces

    def _open(self, headers: dict[str, str]) -> _FilePart | _Field:
        name, filename = disposition(headers)
        if name == "file":
            self.file_parts += 1
            self.filename = (filename or "upload.jsonl")[:512]
            return _FilePart(self._data)
        return _Field(self.fields, name or "")


class _FilePart:
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def data(self, piece: bytes) -> None:
        self.sink.append(piece)

    def end(self) -> None: ...


class _Field:
    """A small form field's text, refused past MAX_FIELD_BYTES rather than accumulated."""

    def __init__(self, fields: dict[str, str], name: str) -> None:
        self.fields, self.name = fields, name
        self.text = bytearray()

    def data(self, piece: bytes) -> None:
        self.text.extend(piece)
        if len(self.text) > MAX_FIELD_BYTES:
            raise UploadError(f"form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes", param=self.name)

    def end(self) -> None:
        if self.name:
            self.fields[self.name] = self.text.decode("utf-8", "replace")
