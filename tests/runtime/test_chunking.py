"""Token-aware chunking: windows, word boundaries and overlap, checked against the real MiniLM tokenizer."""

from __future__ import annotations

import itertools

import pytest
from support.texts import SENTENCES, mixed_texts

from workers.chunking import TokenChunker, chunk_windows, word_starts

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def encoder():
    from workers.runtime.registry import get_encoder

    return get_encoder(MINILM)


@pytest.fixture(scope="module")
def chunker(encoder) -> TokenChunker:
    return TokenChunker(encoder)


def test_windows_cover_everything_and_cut_only_before_word_starts() -> None:
    starts = [0, 3, 5, 9, 12, 13, 18]  # words of 3, 2, 4, 3, 1, 5 and 2 tokens: 20 tokens
    windows = chunk_windows(20, starts, budget=8, overlap=0)
    assert windows == [(0, 5), (5, 13), (13, 20)]
    assert all(end - start <= 8 for start, end in windows)


def test_overlap_starts_at_a_word_within_reach_of_the_previous_end() -> None:
    starts = list(range(0, 40, 2))  # two-token words
    windows = chunk_windows(40, starts, budget=10, overlap=4)
    for (_, e1), (s2, e2) in itertools.pairwise(windows):
        assert 0 < e1 - s2 <= 4 and s2 in starts and e2 - s2 <= 10
    assert windows[0][0] == 0 and windows[-1][1] == 40


def test_a_word_longer_than_a_window_is_the_only_thing_cut_inside() -> None:
    # Tokens 0-24 are one word: cut inside it (no overlap is possible there), then whole words again.
    assert chunk_windows(30, [0, 25], budget=10, overlap=3) == [(0, 10), (10, 20), (20, 30)]
    assert chunk_windows(40, [0, 25], budget=10, overlap=3) == [(0, 10), (10, 20), (20, 25), (25, 35), (35, 40)]


def test_a_word_longer_than_the_overlap_moves_the_next_start_back_to_its_start() -> None:
    # Tokens 4-13 are one word, longer than the 4-token overlap: the next window starts at it, not at 14.
    starts = [0, 2, 4, *range(14, 40, 2)]
    windows = chunk_windows(40, starts, budget=15, overlap=4)
    assert windows[:2] == [(0, 14), (4, 18)]
    for (s1, e1), (s2, e2) in itertools.pairwise(windows):
        assert s1 < s2 < e1 < e2 and s2 in starts and e2 - s2 <= 15


def test_long_whitespace_free_runs_keep_every_window_overlapping(chunker) -> None:
    # Identifiers of ~17 tokens, longer than the 8-token overlap (a window holds three of them), and prose.
    run = "embedq.collections.service.search_by_vector"
    text = " ".join([*(f"{run}_{i}" for i in range(20)), *SENTENCES, *(f"{run}_{i}" for i in range(20, 30))])
    pieces = chunker.chunk([text], 64, 8)[0]
    assert len(pieces) > 5
    for before, after in itertools.pairwise(pieces):
        assert before.start < after.start < before.end < after.end, (before, after)
        assert after.start == 0 or text[after.start - 1].isspace()


def test_short_text_is_one_window_and_empty_text_none() -> None:
    assert chunk_windows(5, [0, 2], budget=10, overlap=4) == [(0, 5)]
    assert chunk_windows(0, [], budget=10, overlap=4) == []
    with pytest.raises(ValueError, match="at least one token"):
        chunk_windows(5, [0], budget=0, overlap=0)


def test_word_starts_follow_whitespace_not_punctuation() -> None:
    text = "Hello, world! It's tokenization-time."
    spans = [(0, 5), (5, 6), (7, 12), (12, 13), (14, 16), (16, 17), (17, 18), (19, 24), (24, 31), (31, 32), (32, 36)]
    assert word_starts(text, spans) == [0, 2, 4, 7]


@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 16), (32, 0), (256, 32)])
def test_chunks_fit_the_model_and_match_its_tokenizer(encoder, chunker, max_tokens: int, overlap: int) -> None:
    texts = [t for t in mixed_texts(60, seed=3) if t.strip()] + [" ".join(SENTENCES * 4)]
    for text, pieces in zip(texts, chunker.chunk(texts, max_tokens, overlap), strict=True):
        assert pieces, text
        counted = encoder.count_tokens([p.text for p in pieces], truncate=False, is_query=False)
        for piece, tokens in zip(pieces, counted, strict=True):
            assert piece.text == text[piece.start : piece.end]
            assert piece.token_count == tokens <= max_tokens
            # Whole words: a chunk begins and ends next to whitespace or the text's ends.
            assert piece.start == 0 or text[piece.start - 1].isspace()
            assert piece.end == len(text) or text[piece.end].isspace()
        assert pieces[0].start == len(text) - len(text.lstrip())
        assert pieces[-1].end == len(text.rstrip())
        for before, after in itertools.pairwise(pieces):
            assert after.start > before.start
            if overlap:
                # Consecutive chunks share a tail of whole words: at most `overlap` tokens of it, unless that
                # tail is one word longer than the overlap (the next chunk starts at that word).
                assert after.start < before.end
                shared_text = text[after.start : before.end]
                shared = encoder.count_tokens([shared_text], truncate=False, is_query=False)[0]
                assert shared - chunker.overhead <= overlap or not any(ch.isspace() for ch in shared_text.strip())
            else:
                assert after.start >= before.end


def test_a_text_shorter_than_one_window_is_one_chunk(chunker) -> None:
    text = "  The quick brown fox jumps over the lazy dog.  "
    [piece] = chunker.chunk([text], 64, 16)[0]
    assert piece.text == text.strip() and (piece.start, piece.end) == (2, len(text) - 2)


def test_max_tokens_above_the_model_limit_is_capped(encoder, chunker) -> None:
    text = " ".join(SENTENCES * 10)
    pieces = chunker.chunk([text], 10_000, 0)[0]
    assert len(pieces) > 1 and max(p.token_count for p in pieces) <= encoder.max_seq_length
