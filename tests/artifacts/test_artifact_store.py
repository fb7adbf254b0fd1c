"""The artifact store on a local folder and on a real S3-compatible server (SeaweedFS): same behaviour on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.s3 import S3Server

from app.artifacts.store import ArtifactNotFoundError, ArtifactStore, ArtifactStoreUnavailableError, check_key
from app.core.config import Settings


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    """Yield an empty store of each kind."""
    if request.param == "file":
        yield ArtifactStore.from_url((tmp_path / "artifacts").as_uri())
        return
    server: S3Server = request.getfixturevalue("s3_server")
    env = server.env(f"store-test/{request.node.name.replace('[', '-').rstrip(']')}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield ArtifactStore.from_settings(Settings())


def test_write_read_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    with store.open_write("models/a/config.json") as f:
        f.write(b'{"x": 1}')
    local = tmp_path / "weights.bin"
    local.write_bytes(bytes(range(256)) * 4096)
    store.put_file(local, "models/a/weights.bin")

    assert store.exists("models/a/config.json")
    assert store.size("models/a/weights.bin") == 256 * 4096
    assert store.list("models/a") == ["models/a/config.json", "models/a/weights.bin"]
    with store.open_read("models/a/config.json") as f:
        assert f.read() == b'{"x": 1}'
    copy = tmp_path / "copy.bin"
    store.get_file("models/a/weights.bin", copy)
    assert copy.read_bytes() == local.read_bytes()

    store.delete("models/a/config.json")
    assert not store.exists("models/a/config.json")
    store.delete("models/a/config.json")  # absent: nothing happens
    store.delete_prefix("models/a")
    assert store.list("models/a") == []
    assert store.list("never/written") == []


def test_a_failed_write_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError, match="disk full"), store.open_write("files/f1") as f:
        f.write(b"half of it")
        raise RuntimeError("disk full")
    assert not store.exists("files/f1")
    assert store.list("files") == []


def test_an_overwrite_replaces_whole(store: ArtifactStore) -> None:
    for content in (b"first version, longer", b"second"):
        with store.open_write("files/f2") as f:
            f.write(content)
    with store.open_read("files/f2") as f:
        assert f.read() == b"second"


def test_missing_keys_are_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="files/none"):
        store.open_read("files/none")
    with pytest.raises(ArtifactNotFoundError):
        store.size("files/none")
    with pytest.raises(ArtifactNotFoundError):
        store.get_file("files/none", tmp_path / "x")


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a//b", "a/../b", "/abs", "a/b c", "a\\b"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key"):
        check_key(key)


def test_wrong_credentials_are_a_clear_error(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env("creds-test").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = ArtifactStore.from_settings(Settings())
    with pytest.raises(ArtifactStoreUnavailableError, match="refused access"):
        store.open_read("files/anything")


def test_settings_default_and_validation(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).artifact_store == (tmp_path / "artifacts").as_uri()
    assert Settings(artifact_store="s3://bucket/prefix/").artifact_store == "s3://bucket/prefix"
    with pytest.raises(ValueError, match="file:///absolute/path or s3://bucket/prefix"):
        Settings(artifact_store="gs://bucket")
    with pytest.raises(ValueError, match="name the bucket"):
        Settings(artifact_store="s3://")
    # Compose and ConfigMaps pass "" for "AWS itself".
    assert Settings(artifact_s3_endpoint_url="", artifact_s3_region="").artifact_s3_endpoint_url is None
