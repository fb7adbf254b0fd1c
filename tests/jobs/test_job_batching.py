"""How a job's inputs are cut into tasks: longest first, bounded by inputs and by characters."""

from __future__ import annotations

import pytest

from app.jobs.batching import length_batches


def test_batches_hold_inputs_of_about_one_length_in_index_order() -> None:
    lengths = [5, 50, 7, 48, 6, 52]
    assert length_batches(range(6), lengths, 3) == [[1, 3, 5], [0, 2, 4]]


def test_a_character_bound_gives_long_inputs_smaller_batches() -> None:
    lengths = [100, 100, 100, 100, 10, 10, 10, 10, 10, 10]
    batches = length_batches(range(10), lengths, 4, max_chars=250)
    assert batches == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert all(sum(lengths[i] for i in batch) <= 250 for batch in batches)


def test_an_input_over_the_character_bound_gets_a_batch_of_its_own() -> None:
    assert length_batches([7, 8, 9], [500, 20, 30], 10, max_chars=100) == [[7], [8, 9]]


def test_every_input_lands_in_exactly_one_batch() -> None:
    lengths = [(i * 37) % 101 + 1 for i in range(300)]
    batches = length_batches(range(300), lengths, 16, max_chars=400)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    assert all(len(batch) <= 16 for batch in batches)
    assert all(len(b) == 1 or sum(lengths[i] for i in b) <= 400 for b in batches)


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        length_batches([0], [1], 0)
