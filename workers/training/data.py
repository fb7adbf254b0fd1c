"""Batches of training pairs with no text twice in a batch, so no in-batch negative is a copy of a positive.

sentence-transformers' NoDuplicatesBatchSampler does the work; it reads a dataset through ``column_names``
and ``dataset[i] -> {column: value}``, which ``PairColumns`` provides without the ``datasets`` package.
Pairs with a hard negative and pairs without are batched apart (every batch has the same columns) and
interleaved in proportion by ProportionalBatchSampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler, ProportionalBatchSampler
from torch.utils.data import BatchSampler, ConcatDataset, Dataset

from app.training.pairs import Pair


class PairColumns(Dataset[dict[str, str]]):
    """Pairs as rows of ``anchor``, ``positive`` (and ``negative``) columns."""

    def __init__(self, pairs: list[Pair], with_negative: bool) -> None:
        self.pairs = pairs
        self.column_names = ["anchor", "positive", "negative"] if with_negative else ["anchor", "positive"]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, str]:
        pair = self.pairs[index]
        row = {"anchor": pair.query, "positive": pair.positive}
        if pair.negative is not None and "negative" in self.column_names:
            row["negative"] = pair.negative
        return row


@dataclass(frozen=True)
class EpochPlan:
    """Every batch of a run, in order: ``batches[k]`` is step k+1's (epoch, indices into ``pairs``)."""

    pairs: list[Pair]
    batches: list[tuple[int, list[int]]]
    steps_per_epoch: list[int]

    def epoch_progress(self, step: int) -> float:
        """Return the fractional epoch reached after ``step`` steps (2.5 = halfway through the third)."""
        done = 0
        for epoch, steps in enumerate(self.steps_per_epoch):
            if step <= done + steps:
                return epoch + (step - done) / max(steps, 1)
            done += steps
        return float(len(self.steps_per_epoch))


def plan_batches(pairs: list[Pair], batch_size: int, epochs: int, seed: int) -> EpochPlan:
    """Return the batches of ``epochs`` epochs, the same for the same arguments (so a resumed run skips exactly)."""
    groups = [g for g in ([p for p in pairs if p.negative is not None], [p for p in pairs if p.negative is None]) if g]
    ordered = [p for group in groups for p in group]
    datasets = [PairColumns(group, with_negative=group[0].negative is not None) for group in groups]
    samplers = [
        NoDuplicatesBatchSampler(
            dataset, batch_size=batch_size, drop_last=False, generator=torch.Generator(), seed=seed + i
        )
        for i, dataset in enumerate(datasets)
    ]
    sampler: BatchSampler = samplers[0]
    if len(samplers) > 1:
        sampler = ProportionalBatchSampler(ConcatDataset(datasets), samplers, generator=torch.Generator(), seed=seed)
    batches: list[tuple[int, list[int]]] = []
    steps_per_epoch: list[int] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        epoch_batches = [list(indices) for indices in sampler if indices]
        batches.extend((epoch, indices) for indices in epoch_batches)
        steps_per_epoch.append(len(epoch_batches))
    return EpochPlan(ordered, batches, steps_per_epoch)


def batch_columns(pairs: list[Pair], indices: list[int]) -> list[list[str]]:
    """Return the batch's texts column by column: queries, positives, and hard negatives when every pair has one."""
    batch = [pairs[i] for i in indices]
    columns = [[p.query for p in batch], [p.positive for p in batch]]
    negatives = [p.negative for p in batch]
    if all(n is not None for n in negatives):
        columns.append([n for n in negatives if n is not None])
    return columns
