"""Held-out retrieval before and after fine-tuning, on WordNet lemma -> definition pairs no one here wrote.

    apt-get install -y wordnet-base      # Debian's WordNet 3.0 database, /usr/share/wordnet
    python -m bench.finetune_wordnet [--pairs 3000] [--held-out 500] [--api http://127.0.0.1:8000]

Without --api it starts its own `embedq up` stack on free ports. It sends the same pairs to POST /fine-tune
and POST /fine-tune-lora (same seed, so both hold out the same pairs), waits for both, and prints the
held-out recall@1, recall@10 and MRR@10 of the base model, the full fine-tune and the LoRA adapter (each
held-out query, a lemma, searches the definitions of all held-out pairs), with the training time per step.
"""

from __future__ import annotations

import argparse
import random
import re
import time
import uuid
from pathlib import Path

import httpx

from bench.stack import embedq_stack

WORDNET_DIR = Path("/usr/share/wordnet")
_GLOSS_EXAMPLE = re.compile(r';\s*"')


def wordnet_nouns(wordnet_dir: Path = WORDNET_DIR) -> dict[str, str]:
    """Return WordNet's noun lemmas, lower-cased, each with its first definition; no definition twice."""
    data = wordnet_dir / "data.noun"
    if not data.is_file():
        raise SystemExit(f"{data} not found: install Debian's WordNet database with `apt-get install -y wordnet-base`")
    pairs: dict[str, str] = {}
    seen_definitions: set[str] = set()
    for line in data.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # the license header
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        words = int(parts[3], 16)
        lemma = parts[4].replace("_", " ")
        definition = _GLOSS_EXAMPLE.split(gloss.strip(), maxsplit=1)[0].strip()
        if words < 1 or lemma.lower() in pairs or definition in seen_definitions or len(definition) < 10:
            continue
        pairs[lemma.lower()] = definition
        seen_definitions.add(definition)
    return pairs


def wordnet_pairs(n: int, seed: int, wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """Return ``n`` (lemma, definition) noun pairs, one per lemma and per definition, sampled with ``seed``."""
    return random.Random(seed).sample(sorted(wordnet_nouns(wordnet_dir).items()), n)


def run_job(client: httpx.Client, path: str, body: dict[str, object]) -> dict:
    created = client.post(path, json=body)
    created.raise_for_status()
    job_id = created.json()["job_id"]
    started = time.perf_counter()
    while (status := client.get(f"/train-status/{job_id}").json())["status"] not in (
        "completed",
        "failed",
        "cancelled",
    ):
        time.sleep(2)
    if status["status"] != "completed":
        raise SystemExit(f"{path} job {job_id} ended {status['status']}: {status['error']}")
    return {**status, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000, help="pairs in all (training + held out)")
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--api", default=None, help="a running embedq API; default: start one")
    args = parser.parse_args()

    pairs = wordnet_pairs(args.pairs, args.seed)
    text = "\n".join(f"{lemma}\t{definition}" for lemma, definition in pairs)
    common = {
        "text_content": text,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "eval_share": args.held_out / args.pairs,
        "seed": args.seed,
    }
    tag = uuid.uuid4().hex[:6]
    with embedq_stack(args.api) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        full = run_job(client, "/fine-tune", {**common, "model_name": f"wordnet-full-{tag}"})
        lora = run_job(client, "/fine-tune-lora", {**common, "model_name": f"wordnet-lora-{tag}"})

    held_out = full["data"]["eval_pairs"]
    print(f"WordNet nouns: {len(pairs)} lemma->definition pairs, {held_out} held out, ", end="")
    print(f"{full['data']['train_pairs']} trained, {args.epochs} epoch(s), batch {args.batch_size}")
    print(f"{'model':<26}{'recall@1':>10}{'recall@10':>11}{'MRR@10':>9}{'s/step':>8}{'steps':>7}{'job s':>8}")
    rows = [("base (all-MiniLM-L6-v2)", full["eval"]["base"], None), ("full fine-tune", full["eval"]["trained"], full)]
    rows.append(("LoRA (r=16, q/v)", lora["eval"]["trained"], lora))
    for name, metrics, job in rows:
        per_step = f"{job['seconds_per_step']:.2f}" if job else "-"
        steps = str(job["total_steps"]) if job else "-"
        wall = f"{job['wall_s']:.0f}" if job else "-"
        print(
            f"{name:<26}{metrics['recall@1']:>10.3f}{metrics['recall@10']:>11.3f}{metrics['mrr@10']:>9.3f}"
            f"{per_step:>8}{steps:>7}{wall:>8}"
        )
    assert full["eval"]["base"] == lora["eval"]["base"], "both jobs must hold out the same pairs"


if __name__ == "__main__":
    main()
