"""The torch device a worker runs models on, chosen from the EMBEDQ_DEVICE setting, and what its CPU can do."""

from __future__ import annotations

import platform
import re
from functools import cache
from pathlib import Path

import torch

_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceUnavailableError(RuntimeError):
    """EMBEDQ_DEVICE names a device this machine does not have."""


def pick_device(setting: str) -> torch.device:
    """Return the device for ``setting`` ("auto", "cpu", "cuda", "cuda:N", "mps"), checking it exists here."""
    value = setting.strip().lower()
    if value == "auto":
        return _auto_device()
    if value == "cpu":
        return torch.device("cpu")
    if value == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError(
                "EMBEDQ_DEVICE=mps but this machine has no usable Apple MPS device: set EMBEDQ_DEVICE=auto or cpu"
            )
        return torch.device("mps")
    cuda = _CUDA.fullmatch(value)
    if cuda is None:
        raise ValueError(f"EMBEDQ_DEVICE={setting!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return _cuda_device(int(cuda.group(1) or 0))


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cuda_device(index: int) -> torch.device:
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceUnavailableError(
            f"EMBEDQ_DEVICE=cuda:{index} but {build}: install a CUDA build of torch on a GPU host "
            "(pip install 'embedq[worker-gpu]'), or set EMBEDQ_DEVICE=auto or cpu"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"EMBEDQ_DEVICE=cuda:{index} but only {count} CUDA device(s) are visible "
            f"(cuda:0..cuda:{count - 1}): pick one of those or check CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", index)


def cpu_flags() -> set[str]:
    """Return this CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@cache
def cpu_name() -> str:
    """Return the CPU's model name (/proc/cpuinfo where there is one, else what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
