"""Model folders in the artifact store: publish one with its manifest, install a revision into a host's models cache.

A published model is ``models/<name>/@<revision>/files/<path>`` for each file of its folder, then
``models/<name>/@<revision>/manifest.json`` (every file's path, size and sha256), written last: a revision
without a manifest is an upload in progress or a failed one, never a model. A host installs a revision into
``EMBEDQ_MODELS_DIR/<name>``, where the resolver finds it like any model folder: downloaded into a temporary
folder, each file checked against the manifest, then renamed into place, under a file lock (``fcntl.flock``)
so the pool processes of one host download a model once. The installed folder carries the manifest as
``embedq_artifact.json``, which says which revision it is. Pure Python: the API, the CLI and workers use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from app.artifacts.store import ArtifactNotFoundError, ArtifactStore, ArtifactStoreUnavailableError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCAL_MARKER = "embedq_artifact.json"
MANIFEST_FORMAT = 1
# Where a host keeps its download locks and half-downloaded folders: hidden, so the resolver lists neither.
CACHE_WORK_FOLDER = ".artifacts"
_CHUNK_BYTES = 8 * 1024 * 1024
_LOCK_POLL_S = 0.2
_REPUBLISH = (
    "publish it again (train again with overwrite=true, or `embedq models push <folder> --name {name} "
    "--overwrite`), or delete it (DELETE /v1/models/{name})"
)


class ModelArtifactError(RuntimeError):
    """A registered model whose files cannot be installed: missing, corrupt, or the store unreachable."""

    def __init__(self, name: str, problem: str, remedy: str | None = None) -> None:
        self.name = name
        remedy = remedy if remedy is not None else _REPUBLISH.format(name=name)
        super().__init__(f"registered model {name!r} cannot be installed on this host: {problem}; {remedy}")


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What one published revision of a model holds."""

    name: str
    revision: str
    files: tuple[ManifestFile, ...]
    created_at: str

    def to_json(self) -> str:
        body = {"format": MANIFEST_FORMAT, **asdict(self), "files": [asdict(f) for f in self.files]}
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Return the manifest in ``text``; ValueError if it is not one."""
        try:
            body = json.loads(text)
            if body.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"manifest format {body.get('format')!r}, expected {MANIFEST_FORMAT}")
            files = tuple(
                ManifestFile(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in body["files"]
            )
            name, revision, created_at = str(body["name"]), str(body["revision"]), str(body["created_at"])
            return cls(name=name, revision=revision, files=files, created_at=created_at)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a model manifest: {exc}") from exc


def revision_prefix(name: str, revision: str) -> str:
    """Return the store key of the folder holding revision ``revision`` of model ``name``."""
    return f"models/{name}/@{revision}"


def publish_folder(store: ArtifactStore, folder: Path, name: str) -> Manifest:
    """Upload every file of model folder ``folder`` as a new revision of ``name``; return its manifest.

    The manifest goes last, so a reader never meets a revision whose files are not all there.
    """
    relpaths = _folder_files(folder)
    if not relpaths:
        raise ValueError(f"{folder} holds no files to publish")
    revision = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    prefix = revision_prefix(name, revision)
    files = []
    for rel in relpaths:
        with (folder / rel).open("rb") as source, store.open_write(f"{prefix}/files/{rel}") as target:
            size, digest = _copy_hashing(source, target)
        files.append(ManifestFile(path=rel, size=size, sha256=digest))
    manifest = Manifest(name=name, revision=revision, files=tuple(files), created_at=datetime.now(UTC).isoformat())
    with store.open_write(f"{prefix}/{MANIFEST}") as target:
        target.write(manifest.to_json().encode())
    log.info("published %s revision %s (%d files) to %s", name, revision, len(files), store.url)
    return manifest


def write_marker(folder: Path, manifest: Manifest) -> None:
    """Record in ``folder`` that it is revision ``manifest.revision`` of its model (see ``local_revision``)."""
    (folder / LOCAL_MARKER).write_text(manifest.to_json())


def local_revision(folder: Path) -> str | None:
    """Return the revision a folder installed from the store is, or None (no folder, or not from the store)."""
    try:
        return Manifest.from_json((folder / LOCAL_MARKER).read_text()).revision
    except (OSError, ValueError):
        return None


def read_manifest(store: ArtifactStore, name: str, revision: str) -> Manifest:
    """Return the manifest of ``revision`` of ``name``; ModelArtifactError if it is missing or unreadable."""
    key = f"{revision_prefix(name, revision)}/{MANIFEST}"
    try:
        with store.open_read(key) as source:
            manifest = Manifest.from_json(source.read())
    except ArtifactNotFoundError as exc:
        raise ModelArtifactError(name, f"revision {revision} is not in the artifact store ({key} is missing)") from exc
    except ValueError as exc:
        raise ModelArtifactError(name, f"the manifest {key} is unreadable ({exc})") from exc
    except (ArtifactStoreUnavailableError, OSError) as exc:
        raise _unreachable(name, store, exc) from exc
    if manifest.revision != revision or manifest.name != name:
        raise ModelArtifactError(name, f"the manifest {key} describes {manifest.name!r} revision {manifest.revision}")
    return manifest


def install(store: ArtifactStore, models_dir: Path, name: str, revision: str, wait_s: float) -> bool:
    """Make ``models_dir/name`` revision ``revision`` of ``name``; return True if this call downloaded it.

    One process of the host downloads, the others wait on the lock and find it there. Nothing is renamed into
    place unless every file matched the manifest; a failure leaves the previous folder (if any) as it was.
    """
    target = models_dir / name
    with _host_lock(models_dir, name, wait_s):
        if local_revision(target) == revision:
            return False
        manifest = read_manifest(store, name, revision)
        incoming = models_dir / CACHE_WORK_FOLDER / "incoming" / f"{_flat(name)}-{uuid.uuid4().hex[:8]}"
        try:
            _download(store, manifest, incoming)
            write_marker(incoming, manifest)
            _swap_in(incoming, target)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
    log.info("installed %s revision %s into the models cache", name, revision)
    return True


def adopt(folder: Path, models_dir: Path, name: str, revision: str, wait_s: float) -> None:
    """Move ``folder`` (revision ``revision`` of ``name``, its marker written) into this host's models cache.

    The host that published a model keeps its copy instead of downloading it again; a newer revision that
    another process installed meanwhile is kept.
    """
    with _host_lock(models_dir, name, wait_s):
        if local_revision(models_dir / name) != revision:
            _swap_in(folder, models_dir / name)


def remove_installed(models_dir: Path, name: str, wait_s: float) -> bool:
    """Remove ``models_dir/name`` if it was installed from the store (a deleted model); True if it removed it."""
    target = models_dir / name
    with _host_lock(models_dir, name, wait_s):
        if local_revision(target) is None:
            return False
        aside = models_dir / CACHE_WORK_FOLDER / "removed" / f"{_flat(name)}-{uuid.uuid4().hex[:8]}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    log.info("removed %s from the models cache: it is no longer registered", name)
    return True


def delete_revision(store: ArtifactStore, name: str, revision: str) -> None:
    """Remove one revision of ``name`` from the store, its manifest first (so no reader starts on it)."""
    prefix = revision_prefix(name, revision)
    store.delete(f"{prefix}/{MANIFEST}")
    store.delete_prefix(prefix)


def delete_model(store: ArtifactStore, name: str) -> None:
    """Remove every revision of ``name`` from the store (not other models whose names start with ``name/``)."""
    revisions = {key.split("/", 1)[0] for key in _keys_under(store, f"models/{name}")}
    for folder in sorted(revisions):
        if folder.startswith("@"):
            delete_revision(store, name, folder[1:])


def _keys_under(store: ArtifactStore, prefix: str) -> list[str]:
    return [key.removeprefix(prefix + "/") for key in store.list(prefix) if key.startswith(prefix + "/")]


def _folder_files(folder: Path) -> list[str]:
    # Links are followed (a Hugging Face cache snapshot is links into its blobs); the marker of an installed
    # copy is not part of the model.
    found = (p for p in folder.rglob("*") if p.is_file())
    return sorted(p.relative_to(folder).as_posix() for p in found if p.relative_to(folder).as_posix() != LOCAL_MARKER)


def _copy_hashing(source: IO[bytes], target: IO[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(_CHUNK_BYTES):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _download(store: ArtifactStore, manifest: Manifest, into: Path) -> None:
    prefix = revision_prefix(manifest.name, manifest.revision)
    for entry in manifest.files:
        key = f"{prefix}/files/{entry.path}"
        local = into / entry.path
        if not local.resolve().is_relative_to(into.resolve()):
            raise ModelArtifactError(manifest.name, f"the manifest names a file outside the model: {entry.path!r}")
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store.open_read(key) as source, local.open("wb") as target:
                size, digest = _copy_hashing(source, target)
        except ArtifactNotFoundError as exc:
            raise ModelArtifactError(manifest.name, f"{key} is missing from the artifact store") from exc
        except (ArtifactStoreUnavailableError, OSError) as exc:
            raise _unreachable(manifest.name, store, exc) from exc
        if (size, digest) != (entry.size, entry.sha256):
            raise ModelArtifactError(
                manifest.name,
                f"{key} does not match its manifest (size {size}, sha256 {digest[:16]}...; the manifest says "
                f"size {entry.size}, sha256 {entry.sha256[:16]}...): the stored copy is corrupt",
            )


def _swap_in(incoming: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        aside = incoming.with_name(f"{incoming.name}-replaced-{uuid.uuid4().hex[:8]}")
        os.replace(target, aside)
        os.replace(incoming, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(incoming, target)


def _unreachable(name: str, store: ArtifactStore, exc: BaseException) -> ModelArtifactError:
    return ModelArtifactError(
        name,
        f"the artifact store could not be read ({type(exc).__name__}: {exc})",
        "check EMBEDQ_ARTIFACT_STORE, the S3 endpoint and credentials on this host, then retry",
    )


def _flat(name: str) -> str:
    return name.replace("/", "--")


@contextlib.contextmanager
def _host_lock(models_dir: Path, name: str, wait_s: float) -> Iterator[None]:
    """Hold this host's lock on model ``name`` (every process that shares ``models_dir`` takes the same one)."""
    path = models_dir / CACHE_WORK_FOLDER / "locks" / f"{_flat(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with path.open("a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ModelArtifactError(
                        name,
                        f"another process of this host has been installing it for over {wait_s:.0f}s",
                        "retry later, or raise EMBEDQ_ARTIFACT_DOWNLOAD_WAIT_S for large models",
                    ) from None
                time.sleep(_LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
