"""Model folders in the artifact store: publish, install into a host's cache, verify, refuse corrupt copies, delete.

On a local store and on a real S3 server (SeaweedFS); the corruption tests flip a byte of the stored object
itself, and the race runs two real processes against one models cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from sqlalchemy.orm import Session
from support.s3 import S3Server
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts, model_cache
from app.catalog.artifacts import LOCAL_MARKER, MANIFEST, ModelArtifactError, revision_prefix
from app.catalog.repository import RegisteredModelRepository
from app.core.config import Settings, get_settings
from app.models.registered_model import RegisteredModel

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def _s3_env(server: S3Server, node: pytest.Item) -> dict[str, str]:
    return server.env(f"model-artifacts/{node.name.replace('[', '-').rstrip(']')}-{time.time_ns()}")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "file":
        yield ArtifactStore.from_url((tmp_path / "artifacts").as_uri())
        return
    env = _s3_env(request.getfixturevalue("s3_server"), request.node)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield ArtifactStore.from_settings(Settings())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_then_install_gives_the_same_files(store: ArtifactStore, tiny_folder: Path, tmp_path: Path) -> None:
    manifest = artifacts.publish_folder(store, tiny_folder, "tuned")
    prefix = revision_prefix("tuned", manifest.revision)

    assert {f.path for f in manifest.files} == set(_files(tiny_folder))
    assert store.exists(f"{prefix}/{MANIFEST}")
    cache = tmp_path / "host-b"
    assert artifacts.install(store, cache, "tuned", manifest.revision, WAIT_S) is True

    installed = _files(cache / "tuned")
    assert installed.pop(LOCAL_MARKER)
    assert installed == _files(tiny_folder)
    assert artifacts.local_revision(cache / "tuned") == manifest.revision
    assert artifacts.install(store, cache, "tuned", manifest.revision, WAIT_S) is False
    # Nothing half-done is left where the resolver looks.
    assert sorted(p.name for p in cache.iterdir()) == [".artifacts", "tuned"]
    assert not any((cache / ".artifacts" / "incoming").iterdir())


def test_a_newer_revision_replaces_the_installed_one(store: ArtifactStore, tiny_folder: Path, tmp_path: Path) -> None:
    first = artifacts.publish_folder(store, tiny_folder, "tuned")
    other = make_tiny_bert(tmp_path / "other", seed=7)
    second = artifacts.publish_folder(store, other, "tuned")
    cache = tmp_path / "host-b"
    artifacts.install(store, cache, "tuned", first.revision, WAIT_S)

    assert artifacts.install(store, cache, "tuned", second.revision, WAIT_S) is True
    assert artifacts.local_revision(cache / "tuned") == second.revision
    assert (cache / "tuned" / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


def test_a_revision_without_its_manifest_is_not_a_model(
    store: ArtifactStore, tiny_folder: Path, tmp_path: Path
) -> None:
    manifest = artifacts.publish_folder(store, tiny_folder, "tuned")
    store.delete(f"{revision_prefix('tuned', manifest.revision)}/{MANIFEST}")

    with pytest.raises(ModelArtifactError, match=r"'tuned'.*not in the artifact store.*publish it again"):
        artifacts.install(store, tmp_path / "host-b", "tuned", manifest.revision, WAIT_S)
    assert not (tmp_path / "host-b" / "tuned").exists()


def test_a_missing_file_is_a_clear_error(store: ArtifactStore, tiny_folder: Path, tmp_path: Path) -> None:
    manifest = artifacts.publish_folder(store, tiny_folder, "tuned")
    store.delete(f"{revision_prefix('tuned', manifest.revision)}/files/config.json")

    with pytest.raises(ModelArtifactError, match=r"files/config.json is missing from the artifact store"):
        artifacts.install(store, tmp_path / "host-b", "tuned", manifest.revision, WAIT_S)
    assert not (tmp_path / "host-b" / "tuned").exists()


@pytest.fixture
def s3_store(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[ArtifactStore]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _s3_env(s3_server, request.node).items():
            patch.setenv(name, value)
        yield ArtifactStore.from_settings(Settings())


def test_one_flipped_byte_in_s3_is_refused_and_the_old_copy_stays(
    s3_server: S3Server, s3_store: ArtifactStore, tiny_folder: Path, tmp_path: Path
) -> None:
    store = s3_store
    good = artifacts.publish_folder(store, tiny_folder, "tuned")
    cache = tmp_path / "host-b"
    artifacts.install(store, cache, "tuned", good.revision, WAIT_S)
    newer = artifacts.publish_folder(store, make_tiny_bert(tmp_path / "newer", seed=3), "tuned")
    weights = f"{store.root}/{revision_prefix('tuned', newer.revision)}/files/model.safetensors"
    client = s3_server.client()
    data = bytearray(client.cat_file(weights))
    data[len(data) // 2] ^= 0x01
    client.pipe_file(weights, bytes(data))

    with pytest.raises(ModelArtifactError) as failed:
        artifacts.install(store, cache, "tuned", newer.revision, WAIT_S)

    message = str(failed.value)
    assert "'tuned'" in message and "model.safetensors does not match its manifest" in message
    assert "corrupt" in message and "publish it again" in message
    assert str(cache) not in message
    assert artifacts.local_revision(cache / "tuned") == good.revision
    assert (cache / "tuned" / "model.safetensors").read_bytes() == (tiny_folder / "model.safetensors").read_bytes()


_RACER = """
import json, sys, time
from pathlib import Path
from app.artifacts.store import ArtifactStore
from app.catalog import artifacts
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
store = ArtifactStore.from_url(sys.argv[1])
downloaded = artifacts.install(store, Path(sys.argv[2]), "tuned", sys.argv[4], 60.0)
folder = Path(sys.argv[2]) / "tuned"
print(json.dumps({"downloaded": downloaded, "revision": artifacts.local_revision(folder),
                  "weights": (folder / "model.safetensors").stat().st_size}))
"""


def test_two_processes_of_one_host_download_once(tiny_folder: Path, tmp_path: Path) -> None:
    store = ArtifactStore.from_url((tmp_path / "artifacts").as_uri())
    manifest = artifacts.publish_folder(store, tiny_folder, "tuned")
    cache, go = tmp_path / "host", tmp_path / "go"
    argv = [sys.executable, "-c", _RACER, store.url, str(cache), str(go), manifest.revision]
    racers = [subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.5)  # both are waiting at the start line once their imports are done
    go.touch()
    results = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]

    assert all(racer.returncode == 0 for racer in racers)
    assert sorted(r["downloaded"] for r in results) == [False, True]
    size = (tiny_folder / "model.safetensors").stat().st_size
    assert all(r["revision"] == manifest.revision and r["weights"] == size for r in results)


def test_delete_removes_every_revision_and_nothing_else(store: ArtifactStore, tiny_folder: Path) -> None:
    for name in ("tuned", "tuned", "tuned-2", "tuned/sub"):
        artifacts.publish_folder(store, tiny_folder, name)

    artifacts.delete_model(store, "tuned")

    assert [k for k in store.list("models") if k.startswith("models/tuned/@")] == []
    assert any(k.startswith("models/tuned-2/@") for k in store.list("models/tuned-2"))
    assert any(k.startswith("models/tuned/sub/@") for k in store.list("models/tuned/sub"))


# The worker's side: Postgres says which revision; the host's cache follows it.


@pytest.fixture
def fleet_settings(settings_env: SettingsEnv, tmp_path: Path) -> Settings:
    settings_env.set(
        EMBEDQ_MODELS_DIR=str(tmp_path / "host-models"),
        EMBEDQ_ARTIFACT_STORE=(tmp_path / "artifacts").as_uri(),
        EMBEDQ_ARTIFACT_CHECK_INTERVAL_S="0",
    )
    (tmp_path / "host-models").mkdir()
    return get_settings()


def _register(session: Session, name: str, revision: str | None) -> None:
    RegisteredModelRepository(session).register(
        RegisteredModel(
            name=name,
            base="x",
            kind="full",
            path="/elsewhere",
            dimension=32,
            created_by_job=None,
            tenant="default",
            revision=revision,
        )
    )
    session.flush()
    model_cache.forget(name)


def test_a_worker_installs_follows_and_drops_a_registered_model(
    fleet_settings: Settings, scope, db_session: Session, tiny_folder: Path, tmp_path: Path
) -> None:
    store = ArtifactStore.from_settings(fleet_settings)
    models_dir = fleet_settings.models_dir
    assert models_dir is not None
    first = artifacts.publish_folder(store, tiny_folder, "tuned")
    _register(db_session, "tuned", first.revision)

    assert model_cache.ensure_installed("tuned", fleet_settings, scope) is True
    assert artifacts.local_revision(models_dir / "tuned") == first.revision
    assert model_cache.ensure_installed("tuned", fleet_settings, scope) is False

    second = artifacts.publish_folder(store, make_tiny_bert(tmp_path / "v2", seed=5), "tuned")
    _register(db_session, "tuned", second.revision)
    assert model_cache.ensure_installed("tuned", fleet_settings, scope) is True
    assert artifacts.local_revision(models_dir / "tuned") == second.revision

    RegisteredModelRepository(db_session).delete("tuned")
    model_cache.forget("tuned")
    assert model_cache.ensure_installed("tuned", fleet_settings, scope) is False
    assert not (models_dir / "tuned").exists()


def test_a_plain_models_dir_folder_is_never_touched(
    fleet_settings: Settings, scope, tiny_folder: Path, db_session: Session
) -> None:
    models_dir = fleet_settings.models_dir
    assert models_dir is not None
    make_tiny_bert(models_dir / "mine")

    assert model_cache.ensure_installed("mine", fleet_settings, scope) is False
    assert (models_dir / "mine" / "config.json").is_file()


def test_a_registered_model_whose_files_are_gone_fails_clearly(
    fleet_settings: Settings, scope, db_session: Session, tiny_folder: Path
) -> None:
    store = ArtifactStore.from_settings(fleet_settings)
    manifest = artifacts.publish_folder(store, tiny_folder, "tuned")
    _register(db_session, "tuned", manifest.revision)
    artifacts.delete_model(store, "tuned")

    with pytest.raises(ModelArtifactError, match=r"registered model 'tuned'.*DELETE /v1/models/tuned"):
        model_cache.ensure_installed("tuned", fleet_settings, scope)


def test_a_trained_model_s_upload_waits_out_a_store_that_does_not_answer(
    tiny_folder: Path, s3_server: S3Server, settings_env: SettingsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    from app.cli.embedded import find_free_port
    from app.training.runner import _publish

    keys = {k: v for k, v in s3_server.env("publish-outage").items() if k.startswith("AWS_")}
    settings_env.set(EMBEDQ_TASK_MAX_RETRIES="1", **keys)
    settings = get_settings()
    dead = ArtifactStore.from_url(
        f"s3://{s3_server.bucket}/publish-outage", endpoint_url=f"http://127.0.0.1:{find_free_port()}"
    )
    started = time.monotonic()
    with caplog.at_level("WARNING"), pytest.raises(botocore.exceptions.EndpointConnectionError):
        _publish(dead, tiny_folder, "outage", settings)  # nothing listens: 2 tries, 1 s apart
    tries = [r.getMessage() for r in caplog.records if "the artifact store did not answer" in r.getMessage()]
    assert len(tries) == 1 and tries[0].endswith("again in 1 s"), tries
    assert time.monotonic() - started >= 1

    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(ValueError):  # not an outage: no second try
        _publish(dead, tiny_folder, "Not A Valid Alias!", settings)
    assert not [r for r in caplog.records if "did not answer" in r.getMessage()]
    live = ArtifactStore.from_url(f"s3://{s3_server.bucket}/publish-outage", endpoint_url=s3_server.endpoint_url)
    assert _publish(live, tiny_folder, "outage", settings).name == "outage"
