"""How inputs are grouped into forward passes: longest first, bounded by rows and by padded tokens (no torch here).

Every forward pass of the runtime (``Encoder.map_batches``: jobs, ingest, sync requests) is planned by
``budget_chunks``. A token budget, not a fixed row count, is what keeps CPU passes fast: a pass of 32 inputs of
256 tokens costs far more than 4x one of 32 inputs of 64 tokens (attention grows with length squared, and the
activations leave the cache). EMBEDQ_MAX_BATCH_SIZE and EMBEDQ_MAX_BATCH_TOKENS set the two bounds.
"""

from __future__ import annotations

from collections.abc import Sequence


def budget_chunks(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Return index lists, longest inputs first, each of at most ``max_rows`` rows and ``max_tokens`` padded tokens.

    A chunk pads to its first (longest) input; an input longer than ``max_tokens`` alone still gets a chunk.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        if current and (len(current) >= max_rows or (len(current) + 1) * width > max_tokens):
            chunks.append(current)
            current = []
        if not current:
            width = max(1, lengths[i])
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


def packed_passes(
    lengths: Sequence[int], group_rows: int, group_tokens: int, pass_tokens: int
) -> list[list[list[int]]]:
    """Return packed passes (``workers/runtime/packed.py``): each a list of attention groups of input indices.

    Groups are ``budget_chunks`` of ``group_rows`` rows and ``group_tokens`` padded tokens, longest first; a
    pass takes consecutive groups up to ``pass_tokens`` real tokens (at least one group).
    """
    passes: list[list[list[int]]] = []
    current: list[list[int]] = []
    held = 0
    for group in budget_chunks(lengths, group_rows, group_tokens):
        size = sum(lengths[i] for i in group)
        if current and held + size > pass_tokens:
            passes.append(current)
            current, held = [], 0
        current.append(group)
        held += size
    if current:
        passes.append(current)
    return passes
