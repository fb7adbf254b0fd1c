"""How an embedding job's inputs are cut into tasks: by length, so each task's forward passes pad little.

A forward pass pads its rows to its longest input. The encoder length-sorts what one task gives it, but a task
of inputs in arrival order mixes 5-token and 250-token texts and pads the short ones far; sorting the whole job
first gives each task inputs of about one length (measured with MiniLM on 2 cores: tasks of 256 texts in input
order ran at 0.87x one encode of all 3,000, length-sorted tasks at 0.97x). Characters stand in for tokens: the
API never tokenizes. Results are stored by input index, so the order the client sees does not change.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_batches(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """Return ``indices`` in batches of at most ``size``, longest inputs first, each batch in index order.

    ``lengths[i]`` is the length of input ``indices[i]``; ties keep index order, so the cut is deterministic.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    order = sorted(range(len(indices)), key=lambda i: (-lengths[i], indices[i]))
    return [sorted(indices[i] for i in order[a : a + size]) for a in range(0, len(order), size)]
