"""Resident memory of a worker serving MiniLM and LoRA adapters over it: shared base vs a merged copy each.

    python -m bench.lora_memory [--adapters 3]

Each mode runs in a fresh process: it loads the base model, then each adapter alias through the worker's
registry, and records the process's resident set size (RSS) after each load, then times embedding 128
short texts with the base and with an adapter (median of 5, one thread). "shared" is what workers do
(one base, adapters attached: workers/runtime/adapters.py); "merged" loads every adapter as its own copy of
the base with the adapter merged in, what workers did before. Adapters are real peft LoRA adapters (r=16 on
query and value, random weights) written next to a copy of MiniLM's tokenizer and pooling files.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def make_adapters(models_dir: Path, count: int) -> list[str]:
    """Write ``count`` LoRA alias folders over MiniLM under ``models_dir``; return their names."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from app.catalog.resolver import resolve_model
    from app.core.config import get_settings
    from workers.runtime.adapters import write_pointer

    base_dir = resolve_model(BASE, get_settings()).path
    assert base_dir is not None
    names = []
    for i in range(count):
        folder = models_dir / f"bench-lora-{i}"
        shutil.copytree(base_dir, folder, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx", "onnx"))
        torch.manual_seed(i)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"], init_lora_weights=False)
        get_peft_model(AutoModel.from_pretrained(base_dir), config).save_pretrained(folder)
        write_pointer(folder, BASE)
        names.append(folder.name)
    return names


def rss_mb() -> float:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def measure(mode: str, names: list[str]) -> dict[str, object]:
    """Return RSS (MiB) after importing torch, after the base, and after each adapter, in this process."""
    import torch

    torch.set_num_threads(1)
    from workers.runtime import adapters, encoder, registry

    if mode == "merged":
        encoder.load_transformer = lambda *args, shared=True: adapters.load_transformer(*args, shared=False)
    steps = [("start", rss_mb())]
    loaded = [registry.get_encoder(BASE)]
    steps.append(("base", rss_mb()))
    for name in names:
        loaded.append(registry.get_encoder(name))
        steps.append((name, rss_mb()))
    return {
        "mode": mode,
        "rss_mib": [(label, round(value, 1)) for label, value in steps],
        "weights_mib": round(weight_bytes(loaded) / 2**20, 1),
        "encode_s": {"base": encode_seconds(loaded[0]), "adapter": encode_seconds(loaded[-1])},
    }


def encode_seconds(enc: object, repeats: int = 5) -> float:
    """Return the median seconds to embed 128 short texts (one thread), the cost of an adapter run unmerged."""
    import time

    texts = [f"text number {i} about a river, a city and the music of the mountains" for i in range(128)]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        enc.encode(texts)  # type: ignore[attr-defined]
        timings.append(time.perf_counter() - started)
    return round(sorted(timings)[repeats // 2], 3)


def weight_bytes(loaded: list[object]) -> int:
    """Return the bytes of distinct parameter tensors behind the loaded encoders (shared ones count once)."""
    seen: set[int] = set()
    total = 0
    for enc in loaded:
        view = enc.model  # type: ignore[attr-defined]
        module = view.base.model if hasattr(view, "base") else view
        for param in module.parameters():
            if param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                total += param.numel() * param.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--mode", choices=("shared", "merged"), help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # a measuring child
        names = sorted(p.name for p in args.models_dir.iterdir() if p.name.startswith("bench-lora-"))
        print(json.dumps(measure(args.mode, names)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp)
        make_adapters(models_dir, args.adapters)
        # No Redis: the registry then records no loads, which is all it needs Redis for.
        env = {k: v for k, v in os.environ.items() if k != "EMBEDQ_REDIS_URL"}
        env |= {"EMBEDQ_MODELS_DIR": str(models_dir), "EMBEDQ_DEVICE": "cpu"}
        env["EMBEDQ_MAX_RESIDENT_MODELS"] = str(args.adapters + 1)
        for mode in ("merged", "shared"):
            child = [sys.executable, "-m", "bench.lora_memory", "--mode", mode, "--models-dir", str(models_dir)]
            out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            steps = result["rss_mib"]
            start, base, last = steps[0][1], steps[1][1], steps[-1][1]
            per_adapter = (last - base) / max(len(steps) - 2, 1)
            print(
                f"{mode:>6}: RSS after torch {start:.0f} MiB, with the base {base:.0f} MiB (+{base - start:.0f}), "
                f"with {len(steps) - 2} adapters {last:.0f} MiB (+{per_adapter:.1f} MiB each); "
                f"parameter tensors {result['weights_mib']} MiB; 128 texts embed in "
                f"{result['encode_s']['base']} s (base), {result['encode_s']['adapter']} s (an adapter)"
            )


if __name__ == "__main__":
    main()
