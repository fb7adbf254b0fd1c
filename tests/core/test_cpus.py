"""The CPUs a process may use: affinity capped by the cgroup's quota, so pools and torch teams fit a container."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_a_quota_caps_the_cpus_rounded_up_and_never_below_one(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "50000 100000")  # half a CPU
    assert usable_cpus(tmp_path) == 1
    write(tmp_path, "cpu.max", f"{(AFFINITY + 3) * 100000} 100000")  # more than the process may run on
    assert usable_cpus(tmp_path) == AFFINITY


def test_without_a_quota_the_affinity_counts(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path) == AFFINITY


@pytest.mark.skipif(AFFINITY < 2, reason="needs a process allowed on 2 CPUs or more to narrow it")
def test_a_narrower_affinity_counts_less() -> None:
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert usable_cpus(Path("/nonexistent")) == 1
    finally:
        os.sched_setaffinity(0, allowed)
