"""One Celery worker per GPU: which GPUs this host has, which of them `--devices` names, and each worker's command.

Found without torch or CUDA (the parent of the workers never touches either, docs "Architecture"): from
``CUDA_VISIBLE_DEVICES`` when the operator set it, else ``nvidia-smi -L``, else the kernel driver's
``/proc/driver/nvidia/gpus``. Every child sees exactly one GPU through ``CUDA_VISIBLE_DEVICES``; with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (unless set) CUDA numbers the GPUs as nvidia-smi does, so ``--devices 2``
is the GPU that ``nvidia-smi`` calls 2.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core.cpus import usable_cpus
from app.core.queues import Queue

WORKER_APP = "workers.celery_app:celery_app"
NVIDIA_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
# Queues a GPU serves: `embedq up` gives each GPU a worker on these when it finds several; the others
# (webhooks, maintenance) are network-bound and go to one CPU worker. `sync` keeps its own solo worker.
GPU_QUEUES = (Queue.INFERENCE, Queue.BULK, Queue.TRAINING)
CPU_QUEUES = (Queue.WEBHOOKS, Queue.MAINTENANCE)
_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)
# EMBEDQ_WORKER_CONCURRENCY=0 on a host that runs models on its CPU: a pool process per core, at most this many
# (each process holds its own copy of the models it loads).
MAX_AUTO_CPU_PROCESSES = 4
# CUDA_VISIBLE_DEVICES values that hide every GPU.
_NO_DEVICES = {"", "-1", "none", "void", "nodevfiles"}


class DeviceSelectionError(ValueError):
    """``--devices`` names no GPU of this host (or the host has none)."""


@dataclass(frozen=True)
class ChildSpec:
    """A worker process to supervise: its name, its command, and what it adds to the parent's environment."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def parse_nvidia_smi(output: str) -> list[str]:
    """Return the GPU indices ``nvidia-smi -L`` lists ("GPU 0: NVIDIA H100 (UUID: ...)" -> "0")."""
    return _NVIDIA_SMI_LINE.findall(output)


def _from_nvidia_smi() -> list[str] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        result = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else None


def _from_proc(proc_gpus: Path) -> list[str]:
    # One folder per GPU, named by PCI address; their sorted order is PCI bus order, as nvidia-smi's.
    try:
        count = sum(1 for entry in proc_gpus.iterdir() if entry.is_dir())
    except OSError:
        return []
    return [str(index) for index in range(count)]


def detect_gpus(
    env: Mapping[str, str],
    nvidia_smi: str | None = None,
    proc_gpus: Path = NVIDIA_PROC_GPUS,
) -> list[str]:
    """Return the ids of the GPUs a worker may be pinned to; empty on a CPU-only host.

    ``nvidia_smi`` is the output of ``nvidia-smi -L`` (None: run it here, if installed).
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if visible.strip().lower() in _NO_DEVICES:
            return []
        return [part.strip() for part in visible.split(",") if part.strip()]
    listed = parse_nvidia_smi(nvidia_smi) if nvidia_smi is not None else _from_nvidia_smi()
    if listed is not None:
        return listed
    return _from_proc(proc_gpus)


def pool_processes(requested: int, device: str, gpus: Sequence[str], cpu_count: int | None = None) -> int:
    """Return a job worker's pool processes: ``requested``, or for 0 (auto) 1 on a GPU, and on a CPU one per core.

    On a CPU, pool processes of one torch thread each (``workers/celery_app.py`` shares the cores out) run
    tasks side by side, which outruns one process whose threads split every forward pass: a job of 3,000
    texts with MiniLM (bf16) on 2 cores ran at 435 texts/s with two processes, 352 with one (docs "Benchmarks").
    ``device`` is EMBEDQ_DEVICE; ``gpus`` what ``detect_gpus`` found; at most ``MAX_AUTO_CPU_PROCESSES``.
    """
    if requested > 0:
        return requested
    on_cpu = device == "cpu" or (device == "auto" and not gpus)
    if not on_cpu:
        return 1
    cores = cpu_count if cpu_count is not None else usable_cpus()
    return max(1, min(cores or 1, MAX_AUTO_CPU_PROCESSES))


def select_devices(spec: str, available: Sequence[str]) -> list[str]:
    """Return the GPUs ``--devices`` names: ``all`` or a comma-separated list of ids from ``available``."""
    if not available:
        raise DeviceSelectionError(
            "--devices needs a GPU, and this host has none (CUDA_VISIBLE_DEVICES, `nvidia-smi -L` and "
            f"{NVIDIA_PROC_GPUS} list none): on a CPU host run `embedq worker` without --devices, "
            "and --concurrency N for N pool processes"
        )
    if spec.strip().lower() == "all":
        return list(available)
    chosen = [part.strip() for part in spec.split(",")]
    if any(not part for part in chosen):
        raise DeviceSelectionError(f"--devices {spec!r}: give `all` or GPU ids separated by commas, e.g. 0,2,3")
    repeated = sorted({part for part in chosen if chosen.count(part) > 1})
    if repeated:
        raise DeviceSelectionError(f"--devices names GPU {', '.join(repeated)} twice: one worker per GPU")
    unknown = [part for part in chosen if part not in available]
    if unknown:
        raise DeviceSelectionError(
            f"--devices names GPU {', '.join(unknown)}, which this host does not have; it has {', '.join(available)}"
        )
    return chosen


def worker_command(queues: str, concurrency: int, nodename: str | None = None) -> list[str]:
    """Return the command of a Celery worker consuming ``queues`` (comma-separated) with ``concurrency`` processes."""
    args = [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-Q", queues,
        "--concurrency", str(concurrency), "-E", "--loglevel", "INFO",
    ]  # fmt: skip
    if nodename is not None:
        args += ["-n", nodename]
    return args


def default_nodename(queues: str) -> str:
    """Return a worker's node name from its first queue (``bulk@%h``), so two workers of one host differ."""
    return f"{queues.split(',')[0]}@%h"


def pinned_env(device: str, env: Mapping[str, str]) -> dict[str, str]:
    """Return what a worker pinned to GPU ``device`` adds to ``env``: it sees that GPU alone, as cuda:0."""
    pinned = {"CUDA_VISIBLE_DEVICES": device, "EMBEDQ_DEVICE": "cuda"}
    if "CUDA_DEVICE_ORDER" not in env:
        pinned["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return pinned


def device_workers(devices: Sequence[str], queues: str, concurrency: int, env: Mapping[str, str]) -> list[ChildSpec]:
    """Return one worker per GPU in ``devices``, named after its first queue and GPU (``inference-gpu2@host``)."""
    role = queues.split(",")[0]
    return [
        ChildSpec(
            f"{role}-gpu{device}",
            worker_command(queues, concurrency, f"{role}-gpu{device}@%h"),
            pinned_env(device, env),
        )
        for device in devices
    ]


def up_job_workers(devices: Sequence[str], concurrency: int, env: Mapping[str, str]) -> list[ChildSpec]:
    """Return the job workers of `embedq up`: one on every job queue, or, with several GPUs, one per GPU.

    With several GPUs each GPU gets a worker on inference, bulk and training, and one worker without a GPU
    takes webhooks and maintenance. The sync queue has its own worker either way (``sync_worker_command``).
    """
    if len(devices) < 2:
        queues = ",".join(q.value for q in Queue if q is not Queue.SYNC)
        return [ChildSpec("worker", worker_command(queues, concurrency))]
    gpu_queues = ",".join(q.value for q in GPU_QUEUES)
    cpu = ChildSpec(
        "worker", worker_command(",".join(q.value for q in CPU_QUEUES), concurrency), {"CUDA_VISIBLE_DEVICES": ""}
    )
    return [*device_workers(devices, gpu_queues, concurrency, env), cpu]
