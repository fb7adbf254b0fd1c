"""Fine-tuning quality: the defaults with mined hard negatives against the old defaults and the base.

    apt-get install -y wordnet-base      # Debian's WordNet 3.0 database, /usr/share/wordnet
    python -m bench.finetune_quality [--pairs 900] [--held-out 300] [--test 300] [--api http://127.0.0.1:8000]

Through the real API and a training worker, on WordNet lemma -> definition pairs (600 trained, 300 held out
by default, the same pairs for every job: same seed), it trains, for full and for LoRA:

- old defaults: one epoch, lr 2e-5 (full) / 1e-4 (LoRA), no evaluation during training;
- new defaults: epochs and learning rate chosen from the data, the best step kept, early stopping, and
  ``hard_negatives: {"mine": true, "per_pair": 1}`` from the training passages;

and prints each one's held-out recall@10 and MRR@10 with their bootstrap 95% intervals, next to the base's
(a dry run). The target: MRR@10 rises at least 2 points more with the new defaults than with the old.

The new defaults pick their best step on the held-out pairs, so their held-out figures are the best of
several looks at the same pairs. ``--test`` more pairs are sent to no job: each registered model (and the
base) embeds them afterwards through POST /v1/embeddings, and their MRR@10 ("test") was never used to pick
anything. Test pairs are searched in blocks of ``--held-out`` (each lemma among its block's definitions), so
``--test 2100`` is seven samples of the held-out measure, and the last lines give the new defaults' margin
over the old with a 95% interval paired per test query.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import httpx
import numpy as np

from bench.finetune_wordnet import run_job, wordnet_pairs
from bench.stack import embedq_stack
from workers.training.evaluation import bootstrap_intervals

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REQUEST_INPUTS = 1000  # under /v1/embeddings' input limit

OLD_DEFAULTS = {
    "/fine-tune": {"epochs": 1, "learning_rate": 2e-5},
    "/fine-tune-lora": {"epochs": 1, "learning_rate": 1e-4},
}
# The old loop had no evaluation during training: evaluating once, after the last step, keeps the last.
OLD_LOOP = {"eval_every_steps": 1_000_000, "early_stopping_patience": 0}
NEW = {"hard_negatives": {"mine": True, "per_pair": 1, "from": "training passages"}}


def cell(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics.get("ci95", {}).get(name, (float("nan"), float("nan")))
    return f"{metrics[name]:.3f} [{low:.3f}-{high:.3f}]"


def test_metrics(client: httpx.Client, model: str, pairs: list[tuple[str, str]], block: int) -> dict[str, Any]:
    """Return MRR@10 (with its bootstrap 95% interval, and each query's reciprocal rank) of ``model`` on ``pairs``,
    embedded through /v1/embeddings: each lemma searches the definitions of its block of ``block`` pairs, as
    the job's own evaluation searches its held-out pairs' (so more test pairs are more samples of the same
    measure, not a harder search)."""
    vectors = []
    for texts in ([lemma for lemma, _ in pairs], [definition for _, definition in pairs]):
        rows = []
        for start in range(0, len(texts), REQUEST_INPUTS):
            reply = client.post("/v1/embeddings", json={"model": model, "input": texts[start : start + REQUEST_INPUTS]})
            reply.raise_for_status()
            rows += [item["embedding"] for item in reply.json()["data"]]
        matrix = np.array(rows, dtype=np.float32)
        vectors.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    reciprocal = []
    for start in range(0, len(pairs), block):
        scores = vectors[0][start : start + block] @ vectors[1][start : start + block].T
        rank_of_answer = (scores > scores.diagonal()[:, None]).sum(axis=1) + 1
        reciprocal.append(np.where(rank_of_answer <= 10, 1.0 / rank_of_answer, 0.0))
    per_query = np.concatenate(reciprocal)
    return {
        "mrr@10": float(per_query.mean()),
        "ci95": bootstrap_intervals({"mrr@10": per_query}, 1000),
        "per_query": per_query,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=900, help="pairs in all (training + held out)")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument(
        "--test", type=int, default=300, help="more pairs, sent to no job, scored afterwards in blocks of --held-out"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--api", default=None, help="a running embedq API; default: start one")
    args = parser.parse_args()

    # One sample, so the first --pairs are the same with any --test.
    sampled = wordnet_pairs(args.pairs + args.test, args.seed)
    pairs, test_pairs = sampled[: args.pairs], sampled[args.pairs :]
    common = {
        "text_content": "\n".join(f"{lemma}\t{definition}" for lemma, definition in pairs),
        "batch_size": args.batch_size,
        "eval_share": args.held_out / args.pairs,
        "seed": args.seed,
    }
    tag = uuid.uuid4().hex[:6]
    rows: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    with embedq_stack(args.api) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        base = run_job(client, "/fine-tune", {**common, "model_name": f"q-base-{tag}", "dry_run": True})
        base_test = test_metrics(client, BASE_MODEL, test_pairs, args.held_out)
        rows.append(("base (all-MiniLM-L6-v2)", base["eval"]["base"], base, base_test))
        for path, kind in (("/fine-tune", "full"), ("/fine-tune-lora", "LoRA")):
            for name, options, alias in (
                (f"{kind}, old defaults", {**OLD_DEFAULTS[path], **OLD_LOOP}, f"q-old-{kind}-{tag}"),
                (f"{kind}, defaults + mined", NEW, f"q-new-{kind}-{tag}"),
            ):
                job = run_job(client, path, {**common, **options, "model_name": alias})
                rows.append((name, job["eval"]["trained"], job, test_metrics(client, alias, test_pairs, args.held_out)))

    print(
        f"WordNet nouns: {len(pairs)} pairs, {base['data']['eval_pairs']} held out, batch {args.batch_size}; "
        f"{len(test_pairs)} test pairs sent to no job"
    )
    print(
        f"{'model':<28}{'recall@10 [95%]':>24}{'MRR@10 [95%]':>24}{'test MRR@10 [95%]':>24}"
        f"{'steps':>7}{'best':>6}{'job s':>7}   MRR@10 lift: held out, test"
    )
    base_mrr = base["eval"]["base"]["mrr@10"]
    for name, metrics, job, test in rows:
        selection = (job.get("eval") or {}).get("selection") or {}
        print(
            f"{name:<28}{cell(metrics, 'recall@10'):>24}{cell(metrics, 'mrr@10'):>24}{cell(test, 'mrr@10'):>24}"
            f"{job['steps']:>7}{selection.get('best_step', '-')!s:>6}{job['wall_s']:>7.0f}"
            f"   {100 * (metrics['mrr@10'] - base_mrr):+.1f}, "
            f"{100 * (test['mrr@10'] - base_test['mrr@10']):+.1f} points"
        )
    print("The new defaults' MRR@10 over the old (the target: at least 2 points), the test interval paired per query:")
    for (_, old, _, old_test), (name, new, _, new_test) in (rows[1:3], rows[3:5]):
        gain = new_test["per_query"] - old_test["per_query"]
        low, high = (100 * v for v in bootstrap_intervals({"gain": gain}, 1000)["gain"])
        print(
            f"  {name.split(',')[0]}: held out {100 * (new['mrr@10'] - old['mrr@10']):+.1f}, "
            f"test {100 * gain.mean():+.1f} [{low:+.1f} to {high:+.1f}] points"
        )


if __name__ == "__main__":
    main()
