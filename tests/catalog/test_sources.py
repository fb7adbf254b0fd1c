"""Model sources and names: ModelScope caches (checked against the real modelscope package), the ``auto`` order
and its fall-backs, aliases (EMBEDQ_MODEL_MAPPING), EMB_PROVIDER_* setting names, unsafe names, and `models pull`.

Offline throughout: caches are folders this test writes; a hub download is a fake ``snapshot_download`` (the hubs
are third-party services), or the real modelscope client in its offline (``local_files_only``) mode.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert

from app.catalog import sources
from app.catalog.resolver import InvalidModelNameError, ResolvedModel, UnknownModelError, known_models, resolve_model
from app.catalog.sources import HubCandidate, ModelDownloadError, ModelScopeMissingError, fetch, hub_order
from app.cli.main import main as cli
from app.core.config import DEFAULT_MODEL, DEFAULT_MODELSCOPE_MAPPING, Settings
from workers.runtime.encoder import Encoder

GTE = "damo/nlp_gte_sentence-embedding_chinese-base"
HAS_MODELSCOPE = importlib.util.find_spec("modelscope") is not None


@pytest.fixture(autouse=True)
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty Hugging Face and ModelScope caches, so this machine's caches cannot change results."""
    from huggingface_hub import constants

    (tmp_path / "hf-cache").mkdir()
    (tmp_path / "ms-cache").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    return tmp_path


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    fields: dict[str, object] = {"default_model": DEFAULT_MODEL, "allow_hub_downloads": False, **overrides}
    return Settings(models_dir=tmp_path / "models", state_dir=tmp_path, **fields)


def seed_hf_cache(root: Path, repo_id: str, tiny: Path) -> Path:
    repo = root / "hf-cache" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def seed_modelscope_cache(root: Path, repo_id: str, tiny: Path, layout: str = "snapshots") -> Path:
    owner, name = repo_id.split("/")
    folder = {
        "snapshots": root / "models" / f"{owner}--{name}" / "snapshots" / "master",
        "legacy": root / "models" / owner / name.replace(".", "___"),
        "legacy-hub": root / "hub" / "models" / owner / name.replace(".", "___"),
    }[layout]
    shutil.copytree(tiny, folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", pooling="cls")


def write_modelscope_folder(folder: Path, tiny: Path) -> Path:
    """Write a ModelScope sentence-embedding folder: weights, tokenizer, configuration.json, no modules.json."""
    shutil.copytree(
        tiny, folder, ignore=shutil.ignore_patterns("modules.json", "1_Pooling", "sentence_bert_config.json")
    )
    (folder / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "task": "sentence-embedding",
                "model": {"type": "bert", "emb_pooler_type": "avg", "normalize": True},
                "preprocessor": {"type": "sentence-embedding", "max_length": 40},
                "pipeline": {"type": "sentence-embedding"},
            }
        )
    )
    return folder


# Hub order.


def test_auto_prefers_modelscope_for_damo_and_iic_names(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert [c.hub for c in hub_order(GTE, "auto", settings)] == ["modelscope", "huggingface"]
    assert [c.hub for c in hub_order("iic/gte_Qwen2-7B-instruct", "auto", settings)] == ["modelscope", "huggingface"]
    assert [c.hub for c in hub_order("BAAI/bge-m3", "auto", settings)] == ["huggingface", "modelscope"]
    assert hub_order("BAAI/bge-m3", "huggingface", settings) == (HubCandidate("huggingface", "BAAI/bge-m3"),)


def test_modelscope_mapping_translates_ids_both_ways(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, modelscope_mapping={"thenlper/gte-base-zh": GTE})
    assert hub_order("thenlper/gte-base-zh", "modelscope", settings) == (HubCandidate("modelscope", GTE),)
    assert hub_order(GTE, "auto", settings) == (
        HubCandidate("modelscope", GTE),
        HubCandidate("huggingface", "thenlper/gte-base-zh"),
    )
    default = settings_for(tmp_path)
    assert default.modelscope_mapping == DEFAULT_MODELSCOPE_MAPPING
    (candidate,) = hub_order("BAAI/bge-large-zh-v1.5", "modelscope", default)
    assert candidate.repo_id == "AI-ModelScope/bge-large-zh-v1.5"


# ModelScope caches.


@pytest.mark.parametrize("layout", ["snapshots", "legacy", "legacy-hub"])
def test_modelscope_cache_layouts_resolve(layout: str, tiny: Path, empty_caches: Path) -> None:
    folder = seed_modelscope_cache(empty_caches / "ms-cache", "AI-ModelScope/bge-small-zh-v1.5", tiny, layout)
    settings = settings_for(empty_caches, model_source="modelscope")

    resolved = resolve_model("AI-ModelScope/bge-small-zh-v1.5", settings)

    assert (resolved.path, resolved.source) == (folder, "modelscope_cache")


@pytest.mark.skipif(not HAS_MODELSCOPE, reason="the modelscope package is not installed")
@pytest.mark.parametrize("layout", ["snapshots", "legacy"])
def test_real_modelscope_client_finds_what_our_lookup_finds(layout: str, tiny: Path, empty_caches: Path) -> None:
    folder = seed_modelscope_cache(empty_caches / "ms-cache", GTE, tiny, layout)
    settings = settings_for(empty_caches)

    hub, fetched = fetch((HubCandidate("modelscope", GTE),), settings)  # offline: the client's cache lookup

    assert hub.hub == "modelscope"
    assert fetched.resolve() == folder.resolve() == resolve_model(GTE, settings).path.resolve()


def test_modelscope_setting_names_choose_the_cache(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "own-ms-cache"
    folder = seed_modelscope_cache(own, GTE, tiny)
    for variable in ("EMBEDQ_MODELSCOPE_CACHE_DIR", "EMB_PROVIDER_MODELSCOPE_CACHE_DIR", "MODELSCOPE_CACHE_DIR"):
        monkeypatch.setenv(variable, str(own))
        assert resolve_model(GTE, settings_for(tmp_path)).path == folder, variable
        monkeypatch.delenv(variable)


def test_modelscope_folder_loads_through_transformers_with_its_pooling(tiny: Path, empty_caches: Path) -> None:
    root = empty_caches / "ms-cache" / "models" / "damo--nlp_gte_sentence-embedding_chinese-base" / "snapshots"
    folder = write_modelscope_folder(root / "master", tiny)
    resolved = resolve_model(GTE, settings_for(empty_caches))
    assert resolved.path == folder

    encoder = Encoder(resolved)

    assert (encoder.family.name, encoder.pooling_mode, encoder.normalize_default) == ("gte", "mean", True)
    assert encoder.max_seq_length == 40, "the ModelScope preprocessor's max_length"
    cls_encoder = Encoder(ResolvedModel(name="plain", path=tiny, source="models_dir"))
    vectors = encoder.encode(["hello world", "a cat"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors, cls_encoder.encode(["hello world", "a cat"]), atol=1e-3), "avg, not cls"


# auto falls back.


def test_auto_falls_back_to_the_hugging_face_cache(
    tiny: Path, empty_caches: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = seed_hf_cache(empty_caches, GTE, tiny)
    with caplog.at_level(logging.INFO, logger="app.catalog.resolver"):
        resolved = resolve_model(GTE, settings_for(empty_caches))
    assert (resolved.path, resolved.source) == (snapshot, "hf_cache")
    assert any("not in the modelscope cache" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnknownModelError):
        resolve_model(GTE, settings_for(empty_caches, model_source="modelscope"))


def test_auto_download_falls_back_when_a_hub_fails(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import huggingface_hub

    def modelscope_unreachable(*args: object, **kwargs: object) -> str:
        raise ConnectionError("modelscope.cn unreachable")

    requested: list[tuple[str, bool]] = []

    def fake_hf_download(repo_id: str, **kwargs: object) -> str:
        requested.append((repo_id, bool(kwargs.get("local_files_only"))))
        return str(tiny)

    monkeypatch.setattr(sources, "modelscope_snapshot_download", lambda: modelscope_unreachable)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hf_download)
    settings = settings_for(tmp_path, allow_hub_downloads=True)
    resolved = resolve_model(GTE, settings)
    assert resolved.path is None and resolved.source == "modelscope"

    with caplog.at_level(logging.WARNING, logger="app.catalog.sources"):
        hub, folder = fetch(resolved.candidates, settings)

    assert (hub.hub, folder) == ("huggingface", tiny)
    assert requested == [(GTE, False)]
    assert any(
        "modelscope.cn unreachable" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records
    )


def test_every_hub_failing_says_what_each_one_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fails(message: str) -> Callable[..., str]:
        def download(*args: object, **kwargs: object) -> str:
            raise OSError(message)

        return download

    monkeypatch.setattr(sources, "modelscope_snapshot_download", lambda: fails("ms down"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fails("hf down"))
    candidates = hub_order(GTE, "auto", settings_for(tmp_path))
    with pytest.raises(ModelDownloadError, match=r"modelscope:.*ms down.*huggingface:.*hf down"):
        fetch(candidates, settings_for(tmp_path, allow_hub_downloads=True))


def test_missing_modelscope_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "modelscope" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelScopeMissingError, match=r"needs the modelscope package: pip install modelscope"):
        sources.modelscope_snapshot_download()
    with pytest.raises(ModelDownloadError, match="pip install modelscope"):
        fetch((HubCandidate("modelscope", GTE),), settings_for(tmp_path))


# Aliases.


def test_alias_resolves_with_its_overrides(tiny: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny, tmp_path / "models" / "acme" / "embedder")
    mapping = {
        "fast": {"name": "acme/embedder", "precision": "int8", "family": "bge"},
        "plain": {"name": "acme/embedder"},
    }
    settings = settings_for(tmp_path, model_mapping=mapping)

    fast, plain = resolve_model("fast", settings), resolve_model("plain", settings)

    assert (fast.name, fast.precision, fast.family, fast.alias, fast.source) == (
        "acme/embedder",
        "int8",
        "bge",
        "fast",
        "models_dir",
    )
    assert plain == resolve_model("acme/embedder", settings), "same load settings: one loaded model"
    assert fast != plain, "other precision: another loaded model"
    assert {"fast", "plain", "acme/embedder"} <= set(known_models(settings))


def test_alias_source_picks_the_hub(tiny: Path, empty_caches: Path) -> None:
    seed_modelscope_cache(empty_caches / "ms-cache", "BAAI/bge-m3", tiny)
    seed_hf_cache(empty_caches, "BAAI/bge-m3", tiny)
    mapping = {"m3-ms": {"name": "BAAI/bge-m3", "source": "modelscope"}}
    settings = settings_for(empty_caches, model_mapping=mapping)
    assert resolve_model("m3-ms", settings).source == "modelscope_cache"
    assert resolve_model("BAAI/bge-m3", settings).source == "hf_cache"


def test_aliases_from_provider_setting_names(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(tiny, tmp_path / "models" / "acme" / "embedder")
    monkeypatch.setenv(
        "EMB_PROVIDER_MODEL_MAPPING", json.dumps({"mine": {"name": "acme/embedder", "precision": "bf16"}})
    )
    monkeypatch.setenv("EMB_PROVIDER_MODEL_SOURCE", "modelscope")
    monkeypatch.setenv("EMB_PROVIDER_MODEL_PRECISION", "fp16")
    monkeypatch.setenv("EMB_PROVIDER_CONTEXT_LENGTH", "77")
    monkeypatch.setenv("EMB_PROVIDER_DEVICE", "cpu")
    monkeypatch.setenv("EMB_PROVIDER_MODEL_NAME", "acme/embedder")
    monkeypatch.setenv("EMB_PROVIDER_ENABLE_QUANTIZATION", "true")
    monkeypatch.setenv("EMB_PROVIDER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("EMB_PROVIDER_MODELSCOPE_TRUST_REMOTE_CODE", "true")
    settings = Settings(models_dir=tmp_path / "models", state_dir=tmp_path)

    assert (settings.model_source, settings.model_precision, settings.max_seq_length) == ("modelscope", "fp16", 77)
    assert (settings.device, settings.default_model, settings.log_level) == ("cpu", "acme/embedder", "DEBUG")
    assert settings.enable_quantization and settings.modelscope_trust_remote_code
    assert resolve_model("mine", settings).precision == "bf16"
    assert resolve_model("acme/embedder", settings).precision == "fp16"
    monkeypatch.setenv("EMBEDQ_MODEL_PRECISION", "fp32")
    assert Settings().model_precision == "fp32", "our name wins when both are set"


@pytest.mark.parametrize("target", ["../outside", "/etc", "a/../../b", "org/.hidden"])
def test_alias_targets_are_validated(target: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, model_mapping={"evil": {"name": target}})
    with pytest.raises(InvalidModelNameError):
        resolve_model("evil", settings)


def test_aliases_do_not_chain(tiny: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny, tmp_path / "models" / "base")
    settings = settings_for(tmp_path, model_mapping={"a": {"name": "b"}, "b": {"name": "base"}})
    assert resolve_model("b", settings).name == "base"
    with pytest.raises(InvalidModelNameError, match="do not chain"):
        resolve_model("a", settings)


def test_mapped_modelscope_id_is_validated_before_it_reaches_the_filesystem(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, modelscope_mapping={"acme/x": "../../etc"}, model_source="modelscope")
    with pytest.raises(UnknownModelError):
        resolve_model("acme/x", settings)


@pytest.mark.parametrize("name", ["../x", "..", "a/../../b", "/etc/passwd", "a\\b", "org/.ssh"])
def test_traversal_names_are_refused_everywhere(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelNameError):
        resolve_model(name, settings_for(tmp_path, allow_hub_downloads=True))
    result = CliRunner().invoke(cli, ["models", "pull", name])
    assert result.exit_code != 0 and "invalid model name" in result.output


# embedq models pull / list.


@pytest.fixture
def cli_env(tmp_path: Path, settings_env: SettingsEnv) -> Path:
    settings_env.set(EMBEDQ_MODELS_DIR=str(tmp_path / "models"), EMBEDQ_STATE_DIR=str(tmp_path))
    settings_env.unset("EMBEDQ_REDIS_URL")
    return tmp_path / "models"


def test_pull_into_models_dir_then_list(tiny: Path, cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[dict[str, object]] = []

    def fake_hf_download(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        target = Path(str(kwargs["local_dir"]))
        shutil.copytree(tiny, target, dirs_exist_ok=True)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hf_download)

    pulled = CliRunner().invoke(cli, ["models", "pull", "acme/tiny-bert", "--source", "huggingface", "--models-dir"])
    assert pulled.exit_code == 0, pulled.output
    assert (cli_env / "acme" / "tiny-bert" / "config.json").is_file()
    assert not (cli_env / ".pulling" / "acme" / "tiny-bert").exists()
    assert calls[0]["repo_id"] == "acme/tiny-bert" and calls[0]["local_files_only"] is False
    assert "sparse_linear.pt" in calls[0]["allow_patterns"], "BGE-M3 heads are fetched too"

    listed = CliRunner().invoke(cli, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith("acme/tiny-bert"))
    assert "models_dir" in line and "32" in line and str(cli_env / "acme" / "tiny-bert") in line

    shown = CliRunner().invoke(cli, ["models", "show", "acme/tiny-bert"])
    assert json.loads(shown.output)["source"] == "models_dir"


def test_pull_modelscope_without_network_reports_the_failure(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> str:
        raise ConnectionError("no route to modelscope")

    monkeypatch.setattr(sources, "modelscope_snapshot_download", lambda: unreachable)
    result = CliRunner().invoke(cli, ["models", "pull", GTE, "--source", "modelscope"])
    assert result.exit_code == 1 and "no route to modelscope" in result.output


def test_list_shows_cached_hub_models_and_their_source(tiny: Path, cli_env: Path, empty_caches: Path) -> None:
    seed_modelscope_cache(empty_caches / "ms-cache", GTE, tiny)
    seed_hf_cache(empty_caches, "BAAI/bge-small-en-v1.5", tiny)
    result = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    by_id = {m["id"]: m for m in json.loads(result.output)["data"]}
    assert (by_id[GTE]["source"], by_id[GTE]["family"]) == ("modelscope_cache", "gte")
    assert (by_id["BAAI/bge-small-en-v1.5"]["source"], by_id["BAAI/bge-small-en-v1.5"]["family"]) == ("hf_cache", "bge")
