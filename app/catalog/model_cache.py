"""This host's copies of registered models: install the revision Postgres names before a model is resolved.

A worker calls ``ensure_installed`` before it resolves a model name. For a registered model (fine-tuned, or
pushed with ``embedq models push``) it compares the revision of the row with the one in
``EMBEDQ_MODELS_DIR/<name>`` and installs the registered one from the artifact store when they differ; a copy
of a model that is no longer registered is removed, so a deleted alias stops resolving on every host. What a
process read from Postgres is trusted for EMBEDQ_ARTIFACT_CHECK_INTERVAL_S; a caller that cannot resolve a
name asks again with ``fresh`` (a model registered a moment ago is served at once).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import InvalidModelNameError, validate_model_name
from app.core.config import Settings
from app.core.db import Scope, session_scope
from app.models.registered_model import RegisteredModelKind


@dataclass(frozen=True)
class _Registration:
    """What Postgres said about a name: None fields for a name nothing registered."""

    registered: bool
    revision: str | None = None
    lora_base: str | None = None


_lock = threading.Lock()
_seen: dict[str, tuple[float, _Registration]] = {}


def ensure_installed(name: str, settings: Settings, scope: Scope = session_scope, *, fresh: bool = False) -> bool:
    """Install the registered revision of ``name`` (and of a LoRA alias's registered base) if this host lacks it.

    Returns True if this call downloaded something. Raises ModelArtifactError when the registered files cannot
    be installed; a name that is not registered (or registered before the artifact store) is left alone.
    ``fresh``: read Postgres now, whatever this process read lately.
    """
    if settings.models_dir is None:
        return False
    downloaded = False
    for each in _names_behind(name, settings):
        registration = _current(each, settings, scope, fresh)
        downloaded |= _install(each, registration, settings)
        base = registration.lora_base
        if base is not None and base != each:
            downloaded |= _install(base, _current(base, settings, scope, fresh), settings)
    return downloaded


def forget(name: str) -> None:
    """Drop what this process read about ``name`` (after it registered or deleted it)."""
    with _lock:
        _seen.pop(name, None)


def _names_behind(name: str, settings: Settings) -> list[str]:
    names = [name]
    entry = settings.model_mapping.get(name)
    if entry is not None:
        names.append(entry.name)
    valid = []
    for each in names:
        try:
            valid.append(validate_model_name(each))
        except InvalidModelNameError:
            continue  # resolving it says what is wrong
    return valid


def _current(name: str, settings: Settings, scope: Scope, fresh: bool) -> _Registration:
    """Return the registration to act on: a trusted read if this host's copy matches it, else a fresh one.

    Installing or removing acts only on what Postgres says now: a read trusted for a few seconds may predate
    an overwrite (whose old revision is already deleted from the store) or a registration (whose copy the
    training host just put in place, and must keep).
    """
    registration = _registration(name, settings, scope, fresh)
    if not fresh and not _settled(name, registration, settings):
        registration = _registration(name, settings, scope, True)
    return registration


def _settled(name: str, registration: _Registration, settings: Settings) -> bool:
    assert settings.models_dir is not None
    local = artifacts.local_revision(settings.models_dir / name)
    if not registration.registered:
        return local is None
    return registration.revision is None or local == registration.revision


def _registration(name: str, settings: Settings, scope: Scope, fresh: bool) -> _Registration:
    now = time.monotonic()
    with _lock:
        seen = _seen.get(name)
    if not fresh and seen is not None and now - seen[0] < settings.artifact_check_interval_s:
        return seen[1]
    with scope() as session:
        row = RegisteredModelRepository(session).registered(name)
        registration = (
            _Registration(
                registered=True,
                revision=row.revision,
                lora_base=row.base if row.kind == RegisteredModelKind.LORA.value else None,
            )
            if row is not None
            else _Registration(registered=False)
        )
    with _lock:
        _seen[name] = (now, registration)
    return registration


def _install(name: str, registration: _Registration, settings: Settings) -> bool:
    assert settings.models_dir is not None
    if _settled(name, registration, settings):
        return False
    if not registration.registered:
        artifacts.remove_installed(settings.models_dir, name, settings.artifact_download_wait_s)
        return False
    store = ArtifactStore.from_settings(settings)
    return artifacts.install(store, settings.models_dir, name, registration.revision, settings.artifact_download_wait_s)
