"""Render deploy/k8s kustomizations without the kustomize binary (none here, and no network to fetch one).

Only the subset of Kustomize the manifests use, and a loud error for anything else, so that a manifest
cannot quietly depend on a feature this renderer would skip:

- ``resources``: YAML files (every document in them) and directories holding a kustomization.yaml;
- ``patches``: ``- path: file`` strategic-merge patches of one object, found by kind and metadata.name;
  maps merge key by key, lists of maps that all carry a ``name`` merge item by item on it (containers,
  env, volumes, ports), other lists are replaced, as Kubernetes' strategic merge does for them;
- ``images``: ``name`` -> ``newName`` and/or ``newTag`` on every container image of that name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches", "images"})


class KustomizeError(ValueError):
    """A kustomization uses what this renderer does not do, or points at nothing."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Return the non-empty YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """Return the objects the kustomization in ``directory`` builds, in the order of its resources."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not apply: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only `- path: file` patches are rendered, not {patch}")
        objects = _apply_patch(objects, directory / patch["path"])
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    return objects


def _apply_patch(objects: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    [patch] = load_documents(path)
    key = (patch["kind"], patch["metadata"]["name"])
    targets = [i for i, obj in enumerate(objects) if (obj["kind"], obj["metadata"]["name"]) == key]
    if len(targets) != 1:
        raise KustomizeError(f"{path}: patch of {key} matches {len(targets)} objects, not one")
    patched = list(objects)
    patched[targets[0]] = strategic_merge(objects[targets[0]], patch)
    return patched


def strategic_merge(base: Any, patch: Any) -> Any:
    """Return ``base`` with ``patch`` merged in (see the module's docstring for the rules)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged = copy.deepcopy(base)
        names = [item["name"] for item in merged]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged[index] = strategic_merge(merged[index], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Return the pod spec of a Deployment or Job, None for other kinds."""
    if obj["kind"] in ("Deployment", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def _set_image(obj: dict[str, Any], image: dict[str, str]) -> None:
    spec = pod_spec(obj)
    if spec is None:
        return
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
