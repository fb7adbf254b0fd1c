"""`embedq models push|pull` and the API's view of registered models: known from Postgres without the files,
deleted with DELETE /v1/models/{id} (row, store, and each host's copy at its next look)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts, model_cache
from app.catalog.repository import RegisteredModelRepository
from app.cli.main import main as cli
from app.core.config import get_settings
from app.core.db import session_scope
from app.main import create_app


@dataclass(frozen=True)
class Hosts:
    made: Path  # where model folders are made, on no host's models path
    api_models: Path
    worker_models: Path
    store: ArtifactStore


@pytest.fixture
def hosts(tmp_path: Path, settings_env: SettingsEnv, clean_state) -> Iterator[Hosts]:
    for sub in ("made", "api", "worker"):
        (tmp_path / sub).mkdir()
    store_url = (tmp_path / "store").as_uri()
    settings_env.set(EMBEDQ_MODELS_DIR=str(tmp_path / "api"), EMBEDQ_ARTIFACT_STORE=store_url)
    yield Hosts(tmp_path / "made", tmp_path / "api", tmp_path / "worker", ArtifactStore.from_url(store_url))
    model_cache.forget("pushed")


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def revision_of(name: str) -> str | None:
    with session_scope() as session:
        row = RegisteredModelRepository(session).registered(name)
        return row.revision if row is not None else None


def test_push_registers_a_folder_the_api_knows_without_its_files(hosts: Hosts) -> None:
    folder = make_tiny_bert(hosts.made / "tiny")
    output = run("models", "push", str(folder), "--name", "pushed")
    revision = revision_of("pushed")

    assert revision is not None and f"revision {revision}" in output
    assert hosts.store.exists(f"{artifacts.revision_prefix('pushed', revision)}/{artifacts.MANIFEST}")
    with TestClient(create_app()) as client:
        described = client.get("/v1/models/pushed")
        assert described.status_code == 200, described.text
        assert described.json()["source"] == "artifact"
        listed_models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed_models["pushed"]["source"] == "artifact"
        made = client.post("/collections", json={"name": "c", "model": "pushed"})
        assert made.status_code == 201 and made.json()["dimension"] == 32, made.text
        listed = {m["name"]: m for m in client.get("/fine-tuned-models").json()}
        assert listed["pushed"]["kind"] == "full"
    assert not (hosts.api_models / "pushed").exists()


def test_push_refuses_to_replace_without_overwrite_and_overwrite_drops_the_old_revision(hosts: Hosts) -> None:
    run("models", "push", str(make_tiny_bert(hosts.made / "v1")), "--name", "pushed")
    first = revision_of("pushed")
    second_folder = make_tiny_bert(hosts.made / "v2", seed=2)
    refused = CliRunner().invoke(cli, ["models", "push", str(second_folder), "--name", "pushed"])
    assert refused.exit_code != 0 and "--overwrite" in refused.output
    not_a_model = CliRunner().invoke(cli, ["models", "push", str(hosts.made), "--name", "other"])
    assert not_a_model.exit_code != 0 and "not a model folder" in not_a_model.output

    run("models", "push", str(second_folder), "--name", "pushed", "--overwrite")

    second = revision_of("pushed")
    assert second not in (None, first)
    assert hosts.store.list(f"models/pushed/@{first}") == []


def test_pull_warms_a_host_once(hosts: Hosts, settings_env: SettingsEnv) -> None:
    folder = make_tiny_bert(hosts.made / "tiny")
    run("models", "push", str(folder), "--name", "pushed")
    settings_env.set(EMBEDQ_MODELS_DIR=str(hosts.worker_models))

    first = run("models", "pull")
    again = run("models", "pull", "pushed")

    revision = revision_of("pushed")
    assert f"installed pushed revision {revision}" in first and f"already here: pushed revision {revision}" in again
    assert artifacts.local_revision(hosts.worker_models / "pushed") == revision
    weights = (hosts.worker_models / "pushed" / "model.safetensors").read_bytes()
    assert weights == (folder / "model.safetensors").read_bytes()


def test_delete_removes_the_row_the_files_and_each_hosts_copy(hosts: Hosts) -> None:
    run("models", "push", str(make_tiny_bert(hosts.made / "tiny")), "--name", "pushed")
    make_tiny_bert(hosts.api_models / "local-only")
    worker_settings = get_settings().model_copy(update={"models_dir": hosts.worker_models})
    model_cache.ensure_installed("pushed", worker_settings, fresh=True)
    assert (hosts.worker_models / "pushed").is_dir()

    with TestClient(create_app()) as client:
        deleted = client.delete("/v1/models/pushed")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"id": "pushed", "object": "model", "deleted": True}
        assert client.get("/v1/models/pushed").status_code == 404
        assert client.delete("/v1/models/pushed").status_code == 404
        local = client.delete("/v1/models/local-only")
        assert local.status_code == 409 and "EMBEDQ_MODELS_DIR" in local.text
        assert client.delete("/v1/models/..%2Fetc").status_code in (400, 404)

    assert revision_of("pushed") is None
    assert hosts.store.list("models") == []
    model_cache.ensure_installed("pushed", worker_settings, fresh=True)  # the worker's next look
    assert not (hosts.worker_models / "pushed").exists()
    assert (hosts.api_models / "local-only").is_dir()


def test_a_model_a_collection_embeds_with_is_not_deleted_and_its_name_not_freed(hosts: Hosts) -> None:
    # Deleted, its name could be registered again by another tenant, whose model the collection would then use.
    run("models", "push", str(make_tiny_bert(hosts.made / "tiny")), "--name", "pushed")
    with TestClient(create_app()) as client:
        assert client.post("/collections", json={"name": "uses-it", "model": "pushed"}).status_code == 201
        refused = client.delete("/v1/models/pushed")
        assert refused.status_code == 409, refused.text
        assert "'uses-it'" in refused.text and "reembed" in refused.text
        assert client.get("/v1/models/pushed").status_code == 200 and revision_of("pushed") is not None
        assert client.delete("/collections/uses-it").status_code in (200, 204)
        assert client.delete("/v1/models/pushed").status_code == 200
