"""The hubs a model comes from, Hugging Face and ModelScope: which to try in what order, their caches, downloads.

No torch here: the API looks in the caches to validate names, ``embedq models pull`` downloads, and a worker
downloads at load time through the same functions. ``huggingface_hub`` and ``modelscope`` are imported only
where a download happens (cache lookups read the cache layouts directly, so the API never imports them).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.core.config import ModelSourceSetting, Settings

logger = logging.getLogger(__name__)

Hub = Literal["huggingface", "modelscope"]

# Names under these ModelScope organisations live on ModelScope first (Alibaba DAMO / Tongyi lab models).
MODELSCOPE_FIRST_PREFIXES = ("damo/", "iic/")

# Files the encoder, the BGE-M3 heads and the sentence-transformers pipeline need; not the ONNX/OpenVINO exports
# that many embedding repos also carry. PyTorch ``.bin`` weights are fetched only when a repo has no safetensors.
_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "sparse_linear.pt", "colbert_linear.pt"]
_IGNORE_PATTERNS = ["onnx/*", "openvino/*"]
_BIN_PATTERNS = ["*.bin"]

_MODEL_MARKERS = ("config.json", "modules.json")

Downloader = Callable[["HubCandidate", "Settings", "Path | None", bool], Path]


class ModelScopeMissingError(RuntimeError):
    """The ModelScope source was asked for, but the ``modelscope`` package is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "loading models from ModelScope needs the modelscope package: pip install modelscope (its hub client; "
            "the extra embedq[modelscope] installs it), or set EMBEDQ_MODEL_SOURCE=huggingface"
        )


class ModelDownloadError(RuntimeError):
    """No hub could provide a model; the message lists what each one said."""


@dataclass(frozen=True)
class HubCandidate:
    """One place to fetch a model from: a hub and the model's id there."""

    hub: Hub
    repo_id: str

    def __str__(self) -> str:
        return f"{self.hub}:{self.repo_id}"


def hub_order(name: str, source: ModelSourceSetting, settings: Settings) -> tuple[HubCandidate, ...]:
    """Return where to look for ``name``, best first: one hub, or for ``auto`` both in the order that suits the name."""
    huggingface = HubCandidate("huggingface", _huggingface_id(name, settings))
    modelscope = HubCandidate("modelscope", settings.modelscope_mapping.get(name, name))
    if source == "huggingface":
        return (huggingface,)
    if source == "modelscope":
        return (modelscope,)
    if name.startswith(MODELSCOPE_FIRST_PREFIXES):
        return (modelscope, huggingface)
    return (huggingface, modelscope)


def _huggingface_id(name: str, settings: Settings) -> str:
    # A ModelScope id that the mapping knows the Hugging Face name of is fetched from Hugging Face under that name.
    reverse = {ms_id: hf_name for hf_name, ms_id in settings.modelscope_mapping.items()}
    return reverse.get(name, name)


def find_cached(candidate: HubCandidate, settings: Settings) -> Path | None:
    """Return the model folder of ``candidate`` in its hub's local cache, or None if it is not there."""
    if candidate.hub == "huggingface":
        return _huggingface_cached(candidate.repo_id)
    return modelscope_cached(candidate.repo_id, modelscope_cache_root(settings))


def _huggingface_cached(repo_id: str) -> Path | None:
    # huggingface_hub is a worker dependency, not an API one: import it only here and live without it.
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for marker in _MODEL_MARKERS:
        try:
            cached = try_to_load_from_cache(repo_id, marker)
        except Exception:  # a malformed cache must not turn a lookup into a 500
            logger.warning("could not read the Hugging Face cache for %r", repo_id, exc_info=True)
            return None
        if isinstance(cached, str):  # not None, nor the "known missing" sentinel
            return Path(cached).parent
    return None


def modelscope_cache_root(settings: Settings) -> Path:
    """Return the ModelScope cache directory: the setting, else modelscope's own default (MODELSCOPE_CACHE)."""
    if settings.modelscope_cache_dir is not None:
        return settings.modelscope_cache_dir.expanduser()
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


def modelscope_cached(repo_id: str, root: Path) -> Path | None:
    """Return ``repo_id``'s snapshot folder under the ModelScope cache ``root``, as modelscope itself finds it.

    Mirrors modelscope (>= 1.38) offline lookup: first the layouts of modelscope <= 1.37 (``models/owner/name``
    with '.' written '___', directly or under ``hub/``), then ``models/owner--name/snapshots/<revision>`` with
    revision master, main, or the only one there.
    """
    owner, _, name = repo_id.partition("/")
    if not name:
        return None
    legacy_name = name.replace(".", "___")
    for legacy in (root / "models" / owner / legacy_name, root / "hub" / "models" / owner / legacy_name):
        if _is_model_folder(legacy):
            return legacy
    snapshots = root / "models" / f"{owner}--{name}" / "snapshots"
    for revision in ("master", "main"):
        if _is_model_folder(snapshots / revision):
            return snapshots / revision
    revisions = [p for p in _subdirs(snapshots) if _is_model_folder(p)]
    return revisions[0] if len(revisions) == 1 else None


def cached_names(settings: Settings) -> list[str]:
    """Return the 'org/name' ids of the models in the Hugging Face and ModelScope caches that hold a model folder."""
    found: set[HubCandidate] = set()
    hf_root = _huggingface_cache_root()
    for repo in _subdirs(hf_root) if hf_root is not None else []:
        if repo.name.startswith("models--") and repo.name.count("--") == 2:
            found.add(HubCandidate("huggingface", repo.name.removeprefix("models--").replace("--", "/")))
    ms_root = modelscope_cache_root(settings)
    for models_dir in (ms_root / "models", ms_root / "hub" / "models"):
        for entry in _subdirs(models_dir):
            if entry.name.count("--") == 1:
                found.add(HubCandidate("modelscope", entry.name.replace("--", "/")))
            else:
                found.update(
                    HubCandidate("modelscope", f"{entry.name}/{sub.name.replace('___', '.')}")
                    for sub in _subdirs(entry)
                )
    return sorted({c.repo_id for c in found if find_cached(c, settings) is not None})


def _huggingface_cache_root() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def fetch(
    candidates: tuple[HubCandidate, ...],
    settings: Settings,
    *,
    local_dir: Path | None = None,
    local_files_only: bool | None = None,
) -> tuple[HubCandidate, Path]:
    """Return the first candidate that a download (or, offline, a cache lookup) gives, and its folder.

    ``local_files_only`` defaults to "downloads not allowed" (EMBEDQ_ALLOW_HUB_DOWNLOADS=false): then each hub
    client only looks in its cache. A candidate that fails is logged with the reason and the next one is tried.
    """
    offline = not settings.allow_hub_downloads if local_files_only is None else local_files_only
    reasons: list[str] = []
    for i, candidate in enumerate(candidates):
        try:
            folder = _DOWNLOADERS[candidate.hub](candidate, settings, local_dir, offline)
        except Exception as exc:  # any hub failure (network, auth, missing package): try the next hub
            reasons.append(f"{candidate}: {exc}")
            if i + 1 < len(candidates):
                logger.warning("could not fetch %s (%s); falling back to %s", candidate, exc, candidates[i + 1])
            continue
        logger.info("fetched %s into %s", candidate, folder)
        return candidate, folder
    raise ModelDownloadError(
        "could not fetch the model from "
        + "; ".join(reasons)
        + ". Check the name and the network, or put the model folder under EMBEDQ_MODELS_DIR/<name>"
    )


def _fetch_huggingface(candidate: HubCandidate, settings: Settings, local_dir: Path | None, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    def download(allow: list[str]) -> Path:
        folder = snapshot_download(
            candidate.repo_id,
            allow_patterns=allow,
            ignore_patterns=_IGNORE_PATTERNS,
            local_dir=str(local_dir) if local_dir is not None else None,
            local_files_only=offline,
        )
        return Path(folder)

    return _with_bin_fallback(download)


def _fetch_modelscope(candidate: HubCandidate, settings: Settings, local_dir: Path | None, offline: bool) -> Path:
    snapshot_download = modelscope_snapshot_download()

    def download(allow: list[str]) -> Path:
        # local_files_only when offline: without it modelscope retries an unreachable hub for about 30 s.
        folder = snapshot_download(
            candidate.repo_id,
            cache_dir=str(modelscope_cache_root(settings)),
            local_dir=str(local_dir) if local_dir is not None else None,
            allow_patterns=allow,
            ignore_patterns=_IGNORE_PATTERNS,
            local_files_only=offline,
        )
        return Path(folder)

    return _with_bin_fallback(download)


def _with_bin_fallback(download: Callable[[list[str]], Path]) -> Path:
    folder = download(_ALLOW_PATTERNS)
    if not any(folder.rglob("*.safetensors")):
        folder = download(_ALLOW_PATTERNS + _BIN_PATTERNS)
    return folder


def modelscope_snapshot_download() -> Callable[..., str]:
    """Return modelscope's ``snapshot_download``, or raise ModelScopeMissingError saying how to install it."""
    if importlib.util.find_spec("modelscope") is None:
        raise ModelScopeMissingError()
    try:
        # modelscope >= 1.38 delegates to modelscope_hub; importing it directly skips modelscope's torch import.
        from modelscope_hub.compat.snapshot_download import snapshot_download
    except ImportError:
        from modelscope.hub.snapshot_download import snapshot_download
    return snapshot_download


_DOWNLOADERS: dict[Hub, Downloader] = {"huggingface": _fetch_huggingface, "modelscope": _fetch_modelscope}


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _MODEL_MARKERS)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []
