"""Fine-tuning quality mechanics on a tiny real BERT: mining, the cached loss, evaluation, best step, early stop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from test_training_trainer import RecordingHooks, make_pairs, make_spec, tiny_base  # noqa: F401

from app.training.defaults import default_epochs, default_learning_rate
from app.training.pairs import Pair
from app.training.spec import StopReason
from workers.training import checkpoints, trainer
from workers.training.data import batch_columns, plan_batches
from workers.training.evaluation import retrieval_metrics
from workers.training.mining import MiningRule, mine_negatives
from workers.training.trainer import contrastive_loss, train

RULE = MiningRule(per_pair=3, candidates=20, relative_margin=0.05, max_similarity=0.95)


def encode(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_mined_negatives_are_never_an_answer_and_respect_both_filters(tiny_base) -> None:  # noqa: F811
    model = SentenceTransformer(str(tiny_base[1]), device="cpu")
    pairs = make_pairs(24)
    # The same query twice with two answers: neither answer may become the other's negative.
    pairs.append(Pair(pairs[0].query, "a second answer about the cat"))
    # A near-copy of pair 1's positive under another query: for pair 1 it is a near-duplicate, not a negative.
    near_copy = pairs[1].positive + " too"
    pairs.append(Pair("an unrelated query about music", near_copy))
    copy_similarity = float((encode(model, [pairs[1].positive]) @ encode(model, [near_copy]).T).item())
    rule = replace(RULE, max_similarity=copy_similarity - 1e-4)

    mined, stats = mine_negatives(model, pairs, rule)

    answers: dict[str, set[str]] = {}
    for p in pairs:
        answers.setdefault(p.query, set()).add(p.positive)
    triples = [p for p in mined if p.negative is not None]
    assert triples and stats["negatives"] == len(triples)
    assert stats["dropped_near_duplicates"] >= 1
    for triple in triples:
        assert triple.negative != triple.positive and triple.negative not in answers[triple.query]
        q, pos, neg = encode(model, [triple.query, triple.positive, triple.negative])
        assert float(pos @ neg) < rule.max_similarity
        positive_score = float(q @ pos)
        assert float(q @ neg) <= positive_score * (1 - rule.relative_margin) + 1e-5
    assert not any(t.query == pairs[1].query and t.negative == near_copy for t in triples)
    # At most per_pair negatives per pair; a pair left without any stays a plain pair.
    for p in pairs:
        assert sum(t.query == p.query and t.positive == p.positive for t in triples) <= rule.per_pair
    assert len([p for p in mined if p.negative is None]) == stats["pairs_without_negative"]


def test_the_margin_drops_candidates_that_score_like_the_positive(tiny_base) -> None:  # noqa: F811
    model = SentenceTransformer(str(tiny_base[1]), device="cpu")
    pairs = make_pairs(24)
    _, strict_stats = mine_negatives(model, pairs, replace(RULE, relative_margin=0.9, max_similarity=1.0))
    _, loose_stats = mine_negatives(model, pairs, replace(RULE, relative_margin=0.0, max_similarity=1.0))
    assert strict_stats["dropped_false_negatives"] > loose_stats["dropped_false_negatives"]
    assert strict_stats["negatives"] < loose_stats["negatives"]


def test_pairs_that_carry_a_negative_keep_it_and_are_not_mined(tiny_base) -> None:  # noqa: F811
    model = SentenceTransformer(str(tiny_base[1]), device="cpu")
    given = [Pair(p.query, p.positive, "a negative the user chose") for p in make_pairs(6)]
    mined, stats = mine_negatives(model, given, RULE)
    assert mined == given and stats["mined_pairs"] == 0


def test_mined_triples_reach_the_loss_and_the_mining_is_kept_for_a_resume(
    tmp_path: Path,
    tiny_base,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    widths: list[int] = []

    def recording_loss(model, hp):
        loss = contrastive_loss(model, hp)

        def forward(features, labels):
            widths.append(len(features))
            return loss(features, labels)

        return forward

    monkeypatch.setattr(trainer, "contrastive_loss", recording_loss)
    mining = {"mine": True, "per_pair": 2, "from": "training passages"}
    spec = make_spec(tmp_path, tiny_base, "full", hard_negatives=mining)
    hooks = RecordingHooks()
    result = train(spec, hooks)
    assert result.stopped is None
    stats = hooks.evals["mining"]
    assert stats["negatives"] > 0 and stats["from"] == "training passages"
    assert 3 in widths  # (query, positive, negative) columns went into the loss
    assert hooks.started_with is not None and hooks.started_with[0] == len(widths) > 4  # more rows than 32 pairs
    assert checkpoints.load_mined(spec.checkpoint_dir) is not None


def test_the_cached_loss_gives_the_plain_loss_and_its_gradients(tiny_base) -> None:  # noqa: F811
    model = SentenceTransformer(str(tiny_base[1]), device="cpu")
    model.eval()  # no dropout: both losses see the same embeddings
    pairs = [Pair(p.query, p.positive, f"an unrelated book {i}") for i, p in enumerate(make_pairs(12))]
    plan = plan_batches(pairs, batch_size=12, epochs=1, seed=1)
    columns = batch_columns(plan.pairs, plan.batches[0][1])
    assert len(columns) == 3

    def loss_and_grads(loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = loss_fn([model.preprocess(texts) for texts in columns], None)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads(MultipleNegativesRankingLoss(model))
    cached_loss, cached = loss_and_grads(contrastive_loss(model, {"mini_batch_size": 4}))
    assert type(contrastive_loss(model, {"mini_batch_size": 4})).__name__ == "CachedMultipleNegativesRankingLoss"
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert plain.keys() == cached.keys() and plain
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-3, atol=1e-5)


def test_held_out_metrics_match_sentence_transformers_and_carry_intervals(tiny_base) -> None:  # noqa: F811
    model = SentenceTransformer(str(tiny_base[1]), device="cpu")
    pairs = make_pairs(30)
    ours = retrieval_metrics(model, pairs, resamples=200)
    corpus = {f"d{i}": p.positive for i, p in enumerate(pairs)}
    evaluator = InformationRetrievalEvaluator(
        queries={f"q{i}": p.query for i, p in enumerate(pairs)},
        corpus=corpus,
        relevant_docs={f"q{i}": {f"d{i}"} for i in range(len(pairs))},
        mrr_at_k=[10],
        precision_recall_at_k=[1, 10],
        accuracy_at_k=[1],
        ndcg_at_k=[10],
        map_at_k=[10],
        write_csv=False,
    )
    theirs = evaluator(model)
    keys = {"recall@1": "cosine_recall@1", "recall@10": "cosine_recall@10", "mrr@10": "cosine_mrr@10"}
    for name, key in keys.items():
        assert ours[name] == pytest.approx(theirs[key], abs=1e-6)
        low, high = ours["ci95"][name]
        assert low <= ours[name] <= high and high - low > 0
    assert ours["queries"] == 30


def test_the_best_step_is_saved_not_the_last_and_early_stopping_stops(tmp_path: Path, tiny_base) -> None:  # noqa: F811
    # A learning rate far too high: the tiny model gets worse after its first steps.
    spec = make_spec(tmp_path / "full", tiny_base, "full", learning_rate=0.5, epochs=3, eval_every_steps=1)
    hooks = RecordingHooks()
    result = train(spec, hooks)
    assert hooks.curve[0][0] == 0 and hooks.curve[0][2] is None  # the base: the reference, not a candidate
    scores = {step: mrr for step, mrr, _ in hooks.curve if step > 0}
    best = max(scores, key=lambda s: (scores[s], -s))
    assert result.best_step == best and best < result.steps and scores[result.steps] < scores[best]
    saved = SentenceTransformer(str(spec.output_dir), device="cpu")
    assert retrieval_metrics(saved, spec.eval_pairs)["mrr@10"] == pytest.approx(scores[best], abs=1e-5)
    assert result.eval["trained"]["mrr@10"] == pytest.approx(scores[best], abs=1e-5)

    patient = make_spec(tmp_path / "patient", tiny_base, "full", learning_rate=0.5, epochs=3, eval_every_steps=1)
    patient = replace(patient, hyperparams={**patient.hyperparams, "early_stopping_patience": 2})
    early = RecordingHooks()
    stopped = train(patient, early)
    assert stopped.stopped is None and stopped.stopped_early and stopped.steps < 12
    after_best = [step for step, _, best_so_far in early.curve if best_so_far is not None and step > best_so_far]
    assert len(after_best) == 2 and after_best[-1] == stopped.steps
    assert patient.output_dir.is_dir()


def test_a_resumed_job_keeps_its_best_so_far(tmp_path: Path, tiny_base) -> None:  # noqa: F811
    hyper = {"learning_rate": 0.5, "epochs": 2, "eval_every_steps": 1}
    straight = make_spec(tmp_path / "straight", tiny_base, "full", **hyper)
    whole = train(straight, RecordingHooks())

    interrupted = make_spec(tmp_path / "interrupted", tiny_base, "full", **hyper)
    first = RecordingHooks(stop_after=5)
    assert train(interrupted, first).stopped is StopReason.SHUTDOWN
    best_before = first.curve[-1][2]
    assert best_before == whole.best_step and best_before < 5  # the best was found before the shutdown
    resumed = train(replace(interrupted, base_eval=first.evals["base"]), RecordingHooks())
    assert resumed.best_step == whole.best_step and resumed.steps == whole.steps
    want = load_file(straight.output_dir / "model.safetensors")
    got = load_file(interrupted.output_dir / "model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


def test_a_dry_run_trains_and_saves_nothing(tmp_path: Path, tiny_base) -> None:  # noqa: F811
    spec = make_spec(tmp_path, tiny_base, "lora", dry_run=True, hard_negatives={"mine": True, "per_pair": 1})
    before = load_file(tiny_base[1] / "model.safetensors")
    hooks = RecordingHooks()
    result = train(spec, hooks)
    assert result.dry_run and result.steps == 0 and not hooks.reports and hooks.started_with is None
    assert set(result.eval) == {"base", "mining"} and "ci95" in result.eval["base"]
    assert not spec.output_dir.exists()
    after = load_file(tiny_base[1] / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_defaults_give_small_sets_enough_steps_and_lora_a_higher_rate() -> None:
    assert default_epochs(steps_per_epoch=38, min_steps=100, max_epochs=10) == 3
    assert default_epochs(steps_per_epoch=5, min_steps=100, max_epochs=10) == 10
    assert default_epochs(steps_per_epoch=5000, min_steps=100, max_epochs=10) == 1
    assert default_learning_rate("full", 600) == 5e-5 and default_learning_rate("full", 50_000) == 2e-5
    assert default_learning_rate("lora", 600) == 5e-4 and default_learning_rate("lora", 50_000) == 2e-4
