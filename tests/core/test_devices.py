"""One worker per GPU: finding the GPUs without torch, `--devices`, each worker's command and environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli.devices import (
    DeviceSelectionError,
    default_nodename,
    detect_gpus,
    device_workers,
    parse_nvidia_smi,
    pool_processes,
    select_devices,
    up_job_workers,
    worker_command,
)
from app.cli.main import main

NVIDIA_SMI_L = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1e0c3a-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1e0c3a-0000-0000-0000-000000000001)
  MIG 1g.10gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1e0c3a-0000-0000-0000-000000000002)
"""


def _queues(args: list[str]) -> str:
    return args[args.index("-Q") + 1]


def test_nvidia_smi_lists_gpus_by_index_and_mig_lines_are_not_gpus() -> None:
    assert parse_nvidia_smi(NVIDIA_SMI_L) == ["0", "1", "2"]
    assert parse_nvidia_smi("No devices were found\n") == []


def test_cuda_visible_devices_wins_and_can_hide_every_gpu(tmp_path: Path) -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "1, 3"}, nvidia_smi=NVIDIA_SMI_L) == ["1", "3"]
    for hidden in ("", "-1", "none", "void", "NoDevFiles"):
        assert detect_gpus({"CUDA_VISIBLE_DEVICES": hidden}, nvidia_smi=NVIDIA_SMI_L) == [], hidden
    assert detect_gpus({}, nvidia_smi=NVIDIA_SMI_L) == ["0", "1", "2"]


def test_without_nvidia_smi_the_driver_folder_counts_the_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on it
    gpus = tmp_path / "gpus"
    for address in ("0000:41:00.0", "0000:01:00.0"):
        (gpus / address).mkdir(parents=True)
    assert detect_gpus({}, proc_gpus=gpus) == ["0", "1"]
    assert detect_gpus({}, proc_gpus=tmp_path / "absent") == []


def test_devices_all_or_a_list_of_this_hosts_ids() -> None:
    assert select_devices("all", ["0", "1", "2"]) == ["0", "1", "2"]
    assert select_devices("2, 0", ["0", "1", "2"]) == ["2", "0"]
    with pytest.raises(DeviceSelectionError, match="does not have; it has 0, 1"):
        select_devices("0,5", ["0", "1"])
    with pytest.raises(DeviceSelectionError, match="twice"):
        select_devices("1,1", ["0", "1"])
    with pytest.raises(DeviceSelectionError, match="GPU ids separated by commas"):
        select_devices("0,,1", ["0", "1"])
    with pytest.raises(DeviceSelectionError, match="without --devices"):
        select_devices("all", [])


def test_each_worker_sees_only_its_gpu_and_is_named_after_it() -> None:
    children = device_workers(["0", "2"], "inference,bulk", 2, {})
    assert [child.name for child in children] == ["inference-gpu0", "inference-gpu2"]
    for child, device in zip(children, ("0", "2"), strict=True):
        assert child.env == {"CUDA_VISIBLE_DEVICES": device, "EMBEDQ_DEVICE": "cuda", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        args = child.args
        assert args[:6] == [sys.executable, "-m", "celery", "-A", "workers.celery_app:celery_app", "worker"]
        assert _queues(args) == "inference,bulk" and args[args.index("--concurrency") + 1] == "2"
        assert args[args.index("-n") + 1] == f"inference-gpu{device}@%h"
    # An operator's own CUDA ordering is kept.
    [child] = device_workers(["1"], "training", 1, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    assert "CUDA_DEVICE_ORDER" not in child.env


def test_up_runs_one_job_worker_per_gpu_only_when_it_finds_several() -> None:
    for devices in ([], ["0"]):
        [single] = up_job_workers(devices, 1, {})
        assert single.env == {} and _queues(single.args) == "inference,bulk,training,webhooks,maintenance"
    children = up_job_workers(["0", "1"], 1, {})
    assert [child.name for child in children] == ["inference-gpu0", "inference-gpu1", "worker"]
    assert all(_queues(child.args) == "inference,bulk,training" for child in children[:2])
    assert _queues(children[2].args) == "webhooks,maintenance"
    assert children[2].env == {"CUDA_VISIBLE_DEVICES": ""}, "the network-bound worker takes no GPU"
    assert worker_command("sync", 1)[-1] == "INFO", "no node name unless asked"


def _host_gpus() -> list[str]:
    return detect_gpus({k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})


def test_auto_pool_processes_are_one_per_core_on_a_cpu_and_one_on_a_gpu() -> None:
    assert pool_processes(0, "auto", [], cpu_count=2) == 2
    assert pool_processes(0, "cpu", ["0"], cpu_count=64) == 4  # at most 4: each holds its own models
    assert pool_processes(0, "auto", ["0"], cpu_count=16) == 1
    assert pool_processes(0, "cuda:1", [], cpu_count=16) == 1
    assert pool_processes(0, "mps", [], cpu_count=8) == 1
    assert pool_processes(3, "auto", [], cpu_count=2) == 3  # an explicit count wins


def test_devices_are_refused_with_what_to_do_when_every_gpu_is_hidden() -> None:
    result = CliRunner().invoke(main, ["worker", "--devices", "all"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.exit_code == 1
    assert "this host has none" in result.output and "run `embedq worker` without --devices" in result.output


def test_stop_timeout_is_refused_without_devices() -> None:
    result = CliRunner().invoke(main, ["worker", "--stop-timeout", "5"])
    assert result.exit_code == 2 and "--stop-timeout goes with --devices" in result.output


@pytest.mark.skipif(bool(_host_gpus()), reason="this host has a GPU: see the GPU-host test below")
def test_devices_are_refused_on_a_cpu_host() -> None:
    result = CliRunner().invoke(main, ["worker", "--devices", "0"], env={"CUDA_VISIBLE_DEVICES": None})
    assert result.exit_code == 1 and "this host has none" in result.output


@pytest.mark.skipif(not _host_gpus(), reason="needs a GPU host")
def test_on_a_gpu_host_unknown_devices_are_refused_naming_the_real_ones() -> None:
    result = CliRunner().invoke(main, ["worker", "--devices", "99"], env={"CUDA_VISIBLE_DEVICES": None})
    assert result.exit_code == 1 and f"it has {', '.join(_host_gpus())}" in result.output


def test_a_lone_worker_is_named_after_its_first_queue_so_two_on_one_host_differ() -> None:
    assert default_nodename("bulk,inference") == "bulk@%h"
    assert default_nodename("training") != default_nodename("inference")
    assert worker_command("bulk", 2, default_nodename("bulk"))[-2:] == ["-n", "bulk@%h"]


def test_name_is_refused_with_devices() -> None:
    result = CliRunner().invoke(main, ["worker", "--devices", "0", "--name", "x@%h"])
    assert result.exit_code != 0
    assert "--name goes without --devices" in result.output
