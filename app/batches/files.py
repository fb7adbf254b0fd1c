"""The Files API: uploads streamed into the artifact store, their metadata in Postgres, per tenant.

A file's bytes live at ``files/<tenant>/<file id>`` in the artifact store (EMBEDQ_ARTIFACT_STORE); store calls
block, so the async parts run them in a worker thread.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.artifacts.store import ArtifactNotFoundError, ArtifactStore
from app.batches.repository import FileRepository
from app.batches.schemas import ExpiresAfter, FileList, FileObject
from app.batches.uploads import MultipartFile, UploadError
from app.core.db import Scope
from app.core.errors import NotFoundError
from app.core.security import Principal
from app.models.batch import BatchFile, FilePurpose

# Bytes gathered from the body before one write to the store (a thread hop each).
WRITE_BYTES = 1024 * 1024
READ_BYTES = 1024 * 1024

log = logging.getLogger(__name__)


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def storage_key(tenant: str, file_id: str) -> str:
    """Return where a file's bytes live in the artifact store."""
    return f"files/{tenant}/{file_id}"


@dataclass(frozen=True)
class Received:
    filename: str
    purpose: str
    size: int
    expires_after_s: int | None = None  # OpenAI's expires_after: the file expires this long after its upload


async def receive_upload(
    body: AsyncIterator[bytes], content_type: str | None, store: ArtifactStore, key: str
) -> Received:
    """Stream the multipart body's file part to ``key``, published only if the whole body was right."""
    reader = MultipartFile(content_type)
    stack = ExitStack()
    sink = await run_in_threadpool(stack.enter_context, store.open_write(key))
    size = 0
    pending: list[bytes] = []
    try:
        async for piece in body:
            pending += reader.feed(piece)
            if sum(map(len, pending)) >= WRITE_BYTES:
                size += await run_in_threadpool(_write, sink, pending)
                pending = []
        pending += reader.close()
        size += await run_in_threadpool(_write, sink, pending)
        purpose = reader.fields.get("purpose")
        if purpose != FilePurpose.BATCH.value:
            raise UploadError(
                f"purpose is {purpose!r}: embedq's Files API takes purpose='batch' only (batch input files)",
                param="purpose",
            )
        expires_after_s = _expires_after(reader.fields)
    except BaseException as exc:
        # Leaving the block with the exception discards the staged bytes: nothing half-written is published.
        await run_in_threadpool(stack.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await run_in_threadpool(stack.close)
    return Received(reader.filename or "upload.jsonl", purpose, size, expires_after_s)


def _expires_after(fields: dict[str, str]) -> int | None:
    """Return the seconds of the form's ``expires_after[anchor]``/``expires_after[seconds]`` fields (as the
    openai client sends ``expires_after={"anchor": "created_at", "seconds": N}``), or None without them."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        policy = ExpiresAfter(anchor=anchor, seconds=int(seconds or ""))  # type: ignore[arg-type]
    except ValueError as exc:  # int() of a non-number, or the policy's own checks
        raise UploadError(
            f"expires_after is anchor={anchor!r}, seconds={seconds!r}: give anchor 'created_at' and seconds from "
            "3600 (1 hour) to 2592000 (30 days)",
            param="expires_after",
        ) from exc
    return policy.seconds


def expiry(after_s: int | None) -> datetime | None:
    """Return when a file made now expires ``after_s`` seconds later (None: never)."""
    return datetime.now(UTC) + timedelta(seconds=after_s) if after_s else None


def _write(sink: IO[bytes], pieces: list[bytes]) -> int:
    data = b"".join(pieces)
    sink.write(data)
    return len(data)


def record_file(session: Session, file_id: str, received: Received, key: str, principal: Principal) -> BatchFile:
    """Return the metadata row of an uploaded file, inserted."""
    file = BatchFile(
        id=file_id,
        tenant=principal.tenant,
        filename=received.filename,
        purpose=received.purpose,
        bytes=received.size,
        storage_key=key,
        expires_at=expiry(received.expires_after_s),
    )
    return FileRepository(session).add(file)


def get_file(session: Session, file_id: str, principal: Principal) -> BatchFile:
    """Return the file if ``principal`` may see it; another tenant's is a 404, as if it did not exist."""
    file = FileRepository(session).get_visible(file_id, principal)
    if file is None:
        raise NotFoundError(f"no file with id {file_id!r}", param="file_id")
    return file


def list_files(
    session: Session,
    principal: Principal,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: str = "desc",
) -> FileList:
    """Return a page of the caller's files, newest first (``order`` asc: oldest first); ``has_more`` says whether
    ``after=last_id`` gives more."""
    rows = FileRepository(session).page(principal, purpose=purpose, after=after, limit=limit + 1, order=order)
    data = [FileObject.of(f) for f in rows[:limit]]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


def delete_file(session: Session, file_id: str, principal: Principal, store: ArtifactStore) -> None:
    """Delete the file's row and its bytes."""
    file = get_file(session, file_id, principal)
    key = file.storage_key
    FileRepository(session).delete(file)
    store.delete(key)


def delete_expired(scope: Scope, store: ArtifactStore, limit: int) -> int:
    """Delete up to ``limit`` expired files, rows then bytes; return how many (run by the maintenance task).

    The API stops showing a file at its ``expires_at`` whether or not this has run yet.
    """
    with scope() as session:
        keys = [file.storage_key for file in FileRepository(session).take_expired(limit)]
    for key in keys:  # after the commit: a failed one leaves the rows, and their bytes, for the next run
        try:
            store.delete(key)
        except Exception:
            log.warning("could not delete expired file %s from the artifact store", key, exc_info=True)
    return len(keys)


def open_content(store: ArtifactStore, key: str) -> IO[bytes]:
    """Return the file's bytes opened for reading; a 404 if the store lost them."""
    try:
        return store.open_read(key)
    except ArtifactNotFoundError as exc:
        raise NotFoundError(f"the content of this file is gone from the artifact store ({exc})") from exc


def content_chunks(source: IO[bytes]) -> Iterator[bytes]:
    """Yield an opened file's bytes in pieces, then close it (Starlette iterates a sync iterator in a thread)."""
    with source:
        while piece := source.read(READ_BYTES):
            yield piece
