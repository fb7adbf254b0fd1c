"""Where a training job keeps its files under EMBEDQ_MODELS_DIR, and how a finished model is put in place.

A job works in ``<models_dir>/.training/<job_id>/`` (hidden: the resolver lists no dot folder). A finished
model is uploaded to the artifact store and registered first; only then is its folder renamed to
``<models_dir>/<alias>`` (``app.catalog.artifacts.adopt``), so a cancelled or crashed job never leaves half a
model where the resolver would serve it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

WORK_FOLDER = ".training"


def job_dir(models_dir: Path, job_id: uuid.UUID) -> Path:
    """Return the folder holding everything a training job writes before it publishes."""
    return models_dir / WORK_FOLDER / str(job_id)


def checkpoint_dir(models_dir: Path, job_id: uuid.UUID) -> Path:
    return job_dir(models_dir, job_id) / "checkpoint"


def staging_dir(models_dir: Path, job_id: uuid.UUID) -> Path:
    return job_dir(models_dir, job_id) / "output"


def alias_dir(models_dir: Path, alias: str) -> Path:
    return models_dir / alias


def publish(staging: Path, target: Path, aside: Path) -> bool:
    """Rename ``staging`` to ``target``, first moving an existing ``target`` to ``aside``; True if it moved one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    replaced = target.exists()
    if replaced:
        remove_tree(aside)
        os.replace(target, aside)
    os.replace(staging, target)
    return replaced


def remove_tree(path: Path) -> None:
    """Delete a folder and everything in it; nothing if it does not exist."""
    shutil.rmtree(path, ignore_errors=True)
