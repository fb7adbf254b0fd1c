"""deploy/k8s: the rendered overlays validate against Kubernetes' schemas and KEDA's CRD, and wire what the docs say.

Rendered by tests/support/kustomize.py (the subset of Kustomize the manifests keep to); every object is
validated with kubernetes-validate against Kubernetes 1.33 in strict mode (unknown fields are errors), the
ScaledObjects with jsonschema against the KEDA CRD schema kept in deploy/k8s/schemas/.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import PRIORITY_STEPS, Channel
from support.kustomize import KustomizeError, load_documents, pod_spec, render
from support.paths import REPO_ROOT

from app.core.config import Settings
from app.core.queues import Queue

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"
OVERLAYS = ("cpu", "gpu")
# The queues whose batches go at a priority step per tenant backlog (app/jobs/fairness.py).
FAIR_QUEUES = {"inference", "bulk"}
WORKERS = ("embedq-worker-inference", "embedq-worker-sync", "embedq-worker-training", "embedq-worker-webhooks")
GPU_WORKERS = ("embedq-worker-inference", "embedq-worker-sync", "embedq-worker-training")


@cache
def keda_schema() -> dict[str, Any]:
    return yaml.safe_load((K8S / "schemas" / "keda.sh_scaledobjects.v1alpha1.yaml").read_text())


def validate(obj: dict[str, Any]) -> None:
    """Raise unless ``obj`` is a valid object of Kubernetes 1.33, or a valid KEDA ScaledObject."""
    if obj["apiVersion"].startswith("keda.sh/"):
        assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject"), "a KEDA kind with no schema"
        jsonschema.Draft202012Validator(keda_schema()).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@cache
def rendered(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / directory))


def objects(directory: str, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in rendered(directory) if obj["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def queues_of(deployment: dict[str, Any]) -> set[str]:
    command = container(deployment)["command"]
    return set(command[command.index("-Q") + 1].split(","))


@pytest.mark.parametrize("directory", ["overlays/cpu", "overlays/gpu", "autoscaling/hpa", "autoscaling/keda"])
def test_every_rendered_object_validates(directory: str) -> None:
    kinds = set()
    for obj in rendered(directory):
        validate(obj)
        kinds.add(obj["kind"])
    assert kinds, directory


def test_the_example_secret_validates_and_is_never_applied_over_the_real_one() -> None:
    [secret] = load_documents(K8S / "base" / "secret.example.yaml")
    validate(secret)
    assert "secret.example.yaml" not in (K8S / "base" / "kustomization.yaml").read_text()
    assert not objects("overlays/gpu", "Secret")


def test_broken_manifests_fail_validation() -> None:
    deployment = copy.deepcopy(objects("overlays/gpu", "Deployment")["embedq-api"])
    del deployment["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError, match="selector"):
        validate(deployment)
    probe = copy.deepcopy(objects("overlays/gpu", "Deployment")["embedq-beat"])
    container(probe)["livenessProbe"]["periodSecond"] = 30  # misspelt: strict validation rejects it
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(probe)

    scaled = objects("autoscaling/keda", "ScaledObject")["embedq-worker-training"]
    for broken in (
        lambda so: so["spec"].pop("scaleTargetRef"),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=1),  # KEDA wants strings
        lambda so: so["spec"].update(minReplicas=1),  # HPA's name, not KEDA's
        lambda so: so["spec"]["triggers"][0].pop("type"),
    ):
        copied = copy.deepcopy(scaled)
        broken(copied)
        with pytest.raises(jsonschema.ValidationError):
            validate(copied)


def test_the_renderer_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [../x]\nnamePrefix: a-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "patch.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nothing}\n")
    base = K8S / "base"
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\npatches: [{{path: patch.yaml}}]\n")
    with pytest.raises(KustomizeError, match="matches 0 objects"):
        render(tmp_path)


def test_every_queue_has_a_worker_deployment_that_scales_on_it() -> None:
    deployments = objects("overlays/gpu", "Deployment")
    consumed: dict[str, set[str]] = {name: queues_of(deployments[name]) for name in WORKERS}
    assert set().union(*consumed.values()) == {q.value for q in Queue}
    scaled = objects("autoscaling/keda", "ScaledObject")
    hpas = objects("autoscaling/hpa", "HorizontalPodAutoscaler")
    assert set(scaled) == set(hpas) == set(WORKERS)
    for name, queues in consumed.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        # Fair queues spread job batches over kombu's per-priority lists: each is a trigger.
        sublists = {f"{q}{Channel.sep}{step}" for q in queues & FAIR_QUEUES for step in PRIORITY_STEPS if step}
        assert {t["metadata"]["listName"] for t in spec["triggers"]} == queues | sublists, name
        assert all(t["type"] == "redis" and int(t["metadata"]["listLength"]) >= 1 for t in spec["triggers"])
        if len(spec["triggers"]) > 1:  # KEDA alone scales to the busiest trigger: the lists' sum is the backlog
            names = [t["name"] for t in spec["triggers"]]
            modifiers = spec["advanced"]["scalingModifiers"]
            assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names), names  # the formula's variables
            assert sorted(modifiers["formula"].replace(" ", "").split("+")) == sorted(names), name
            assert {modifiers["target"]} == {t["metadata"]["listLength"] for t in spec["triggers"]}, name
            assert modifiers["metricType"] == "AverageValue"
        # /readyz wants a consumer on every queue: no worker Deployment may scale to zero.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        metrics = [m["external"] for m in hpa["metrics"]]
        assert {m["metric"]["name"] for m in metrics} == {"embedq_queue_depth"}
        assert {m["metric"]["selector"]["matchLabels"]["queue"] for m in metrics} == queues, name
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (spec["minReplicaCount"], spec["maxReplicaCount"])


def test_every_long_running_pod_is_probed_and_workers_by_their_liveness_file() -> None:
    for name, deployment in objects("overlays/gpu", "Deployment").items():
        pod = container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in pod, (name, probe)
        if name in WORKERS or name == "embedq-beat":
            command = pod["livenessProbe"]["exec"]["command"]
            assert command[:2] == ["embedq", "worker-alive"], name
            assert ("--node" in command) == (name == "embedq-beat"), name
            # The command needs ~1.5 s of CPU; Kubernetes' default timeout is 1 s.
            assert pod["livenessProbe"]["timeoutSeconds"] >= 10, name
    api = container(objects("overlays/gpu", "Deployment")["embedq-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_beat_is_one_replica_replaced_not_rolled_and_training_gets_time_to_checkpoint() -> None:
    deployments = objects("overlays/gpu", "Deployment")
    beat = deployments["embedq-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"] == {"type": "Recreate"}
    assert "embedq-beat" not in objects("autoscaling/keda", "ScaledObject")
    training = deployments["embedq-worker-training"]["spec"]["template"]["spec"]
    assert training["terminationGracePeriodSeconds"] >= 1800
    [job] = objects("overlays/gpu", "Job").values()
    assert container(job)["command"] == ["embedq", "migrate"]


def test_every_deployment_has_a_disruption_budget_over_its_pods() -> None:
    budgets = objects("overlays/cpu", "PodDisruptionBudget")
    for name, deployment in objects("overlays/cpu", "Deployment").items():
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"], name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_pods_get_one_gpu_each_in_the_gpu_overlay_only(overlay: str) -> None:
    for name, deployment in objects(f"overlays/{overlay}", "Deployment").items():
        pod = container(deployment)
        assert pod["image"] == f"registry.example.com/embedq:{overlay}", name
        gpus = pod["resources"].get("limits", {}).get("nvidia.com/gpu")
        env = {e["name"]: e.get("value") for e in pod.get("env", [])}
        if overlay == "gpu" and name in GPU_WORKERS:
            assert gpus == 1 and env["EMBEDQ_DEVICE"] == "cuda", name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                deployment["spec"]["template"]["spec"]["tolerations"]
            )
        else:
            assert gpus is None, name
        if overlay == "cpu" and name in GPU_WORKERS:
            assert env["EMBEDQ_DEVICE"] == "cpu" and pod["resources"]["limits"]["cpu"] == "4", name
            # The prefork pool's children take EMBEDQ_WORKER_TORCH_THREADS; the solo pool's torch reads OMP.
            threads = "OMP_NUM_THREADS" if name == "embedq-worker-sync" else "EMBEDQ_WORKER_TORCH_THREADS"
            assert env[threads] == "4", name


def test_pods_read_their_settings_from_the_configmap_and_secret_and_those_are_real_settings() -> None:
    [config] = objects("overlays/gpu", "ConfigMap").values()
    [secret] = load_documents(K8S / "base" / "secret.example.yaml")
    for obj in rendered("overlays/gpu"):
        spec = pod_spec(obj)
        if spec is None:
            continue
        for pod in spec["containers"]:
            sources = [next(iter(source.values()))["name"] for source in pod["envFrom"]]
            assert sources == [config["metadata"]["name"], secret["metadata"]["name"]], obj["metadata"]["name"]
    settings = {f"EMBEDQ_{name.upper()}" for name in Settings.model_fields}
    named = {key for key in [*config["data"], *secret["stringData"]] if key.startswith("EMBEDQ_")}
    assert named - settings == set(), "not a setting: a typo, or a setting that was renamed"
    # The operator's services: Postgres and Redis are secrets (their URLs carry passwords), and KEDA's
    # address of Redis sits beside them.
    assert {"EMBEDQ_DATABASE_URL", "EMBEDQ_REDIS_URL", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    assert "KEDA_REDIS_ADDRESS" in config["data"] and "KEDA_REDIS_PASSWORD" in secret["stringData"]
    for trigger in (t for so in objects("autoscaling/keda", "ScaledObject").values() for t in so["spec"]["triggers"]):
        assert trigger["metadata"]["addressFromEnv"] == "KEDA_REDIS_ADDRESS"
        assert trigger["metadata"]["passwordFromEnv"] == "KEDA_REDIS_PASSWORD"
