"""The artifact store: files every host of a fleet reads, on ``file://`` or any S3-compatible store, via fsspec.

Keys are relative '/'-separated paths ("models/my-alias/<revision>/config.json"); the store maps them under its
root. A write becomes visible whole or not at all: it goes to a temporary file first, then is renamed into place
(local) or uploaded (S3: an object appears only when its upload completes). Listings are never cached, so a
host sees what another host wrote a moment ago. Calls block: async code runs them in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from app.core.config import Settings

# A key segment: no "..", no empty segment, nothing a filesystem or S3 would read specially.
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._@=+-]+")


class ArtifactNotFoundError(LookupError):
    """A key that the store does not hold."""

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self.key = key
        super().__init__(f"{key!r} is not in the artifact store {store.url}")


class ArtifactStoreUnavailableError(RuntimeError):
    """The store could not be reached or refused the credentials."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError."""
    segments = key.split("/")
    if not key or any(not _KEY_SEGMENT.fullmatch(s) or s in {".", ".."} for s in segments):
        raise ValueError(f"invalid artifact key {key!r}: '/'-separated segments of letters, digits and ._@=+-")
    return key


@dataclass(frozen=True)
class ArtifactStore:
    """One artifact store: ``url`` as configured (never with credentials), its filesystem and root path."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """Return the store EMBEDQ_ARTIFACT_STORE names."""
        assert settings.artifact_store is not None  # set by Settings' derived paths
        return cls.from_url(
            settings.artifact_store, endpoint_url=settings.artifact_s3_endpoint_url, region=settings.artifact_s3_region
        )

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> ArtifactStore:
        """Return the store at ``url`` (file:///path or s3://bucket/prefix)."""
        url = url.rstrip("/")
        if url.startswith("file://"):
            root = url[len("file://") :]
            Path(root).mkdir(parents=True, exist_ok=True)
            return cls(url=url, fs=LocalFileSystem(auto_mkdir=True), root=root)
        if url.startswith("s3://"):
            client_kwargs: dict[str, Any] = {}
            if region:
                client_kwargs["region_name"] = region
            fs = fsspec.filesystem(
                "s3",
                endpoint_url=endpoint_url,
                client_kwargs=client_kwargs,
                # botocore's legacy default (5 attempts) under s3fs's own 5 tries kept a request that met a store
                # not answering for ~45 s; a job task waits out longer outages itself (app.core.store_outages).
                config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}},
                use_listings_cache=False,
                # Each process (and each worker child after fork) gets a client of its own.
                skip_instance_cache=True,
            )
            return cls(url=url, fs=fs, root=url[len("s3://") :])
        raise ValueError(f"artifact store {url!r}: use file:///absolute/path or s3://bucket/prefix")

    def path(self, key: str) -> str:
        """Return the filesystem path of ``key``."""
        return f"{self.root}/{check_key(key)}"

    def open_read(self, key: str) -> IO[bytes]:
        """Return ``key`` opened for reading; ArtifactNotFoundError if absent."""
        try:
            return self.fs.open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(self, key) from exc
        except PermissionError as exc:
            raise ArtifactStoreUnavailableError(f"artifact store {self.url} refused access: {exc}") from exc

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Yield a file to write ``key`` into; it is published when the block ends, and not at all if it raises.

        The bytes go to a temporary file first (next to the target on a local store, so publishing is a
        rename; in the system's temp dir for S3, where the upload completes whole or not at all).
        """
        target = self.path(key)
        local = self._is_local()
        staging_dir = Path(target).parent if local else None
        if staging_dir is not None:
            staging_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=staging_dir, prefix=".embedq-upload-", delete=False) as staged:
            staged_path = Path(staged.name)
            try:
                yield staged
                staged.flush()
            except BaseException:
                staged_path.unlink(missing_ok=True)
                raise
        try:
            if local:
                os.replace(staged_path, target)
            else:
                self.fs.put_file(str(staged_path), target)
        finally:
            staged_path.unlink(missing_ok=True)

    def put_file(self, local_path: Path, key: str) -> None:
        """Copy a local file to ``key`` (whole or not at all)."""
        with local_path.open("rb") as source, self.open_write(key) as target:
            shutil.copyfileobj(source, target, _COPY_CHUNK_BYTES)

    def get_file(self, key: str, local_path: Path) -> None:
        """Copy ``key`` to a local file; ArtifactNotFoundError if absent."""
        with self.open_read(key) as source, local_path.open("wb") as target:
            shutil.copyfileobj(source, target, _COPY_CHUNK_BYTES)

    def exists(self, key: str) -> bool:
        """Return whether ``key`` is a file in the store."""
        return bool(self.fs.isfile(self.path(key)))

    def size(self, key: str) -> int:
        """Return the size of ``key`` in bytes; ArtifactNotFoundError if absent."""
        try:
            return int(self.fs.info(self.path(key))["size"])
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(self, key) from exc

    def list(self, prefix: str) -> list[str]:
        """Return every key under ``prefix`` (a folder key), sorted; empty if there is none."""
        base = self.path(prefix.rstrip("/"))
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        # Some S3 servers (SeaweedFS) list an emptied folder as a directory entry: only files are keys.
        files = (_strip_scheme(path) for path, info in found.items() if info.get("type") == "file")
        return sorted(path.removeprefix(root) for path in files)

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens if it is absent."""
        with suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (a folder key)."""
        for key in self.list(prefix):
            self.delete(key)
        local_dir = Path(self.path(prefix.rstrip("/")))
        if self._is_local() and local_dir.is_dir():
            shutil.rmtree(local_dir, ignore_errors=True)

    def _is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)


_COPY_CHUNK_BYTES = 8 * 1024 * 1024


def _strip_scheme(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path
