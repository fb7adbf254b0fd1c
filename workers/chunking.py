"""Token-aware chunking: windows of a model's own tokens, cut at word boundaries, with overlap.

A window holds at most ``max_tokens`` tokens as the model sees them (special tokens and the family's
passage prompt included), so no chunk is ever truncated by the model. Consecutive windows share at most
``overlap_tokens`` tokens, or more where one word is longer than the overlap (the next window then starts
at that word). Windows start and end at word boundaries (whitespace between tokens); only a single word
longer than a whole window is cut inside. A text shorter than one window is one chunk.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.collections.contracts import ChunkPiece, Vectors

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder

Span = tuple[int, int]


def word_starts(text: str, spans: Sequence[Span]) -> list[int]:
    """Return the indices of tokens that begin a word: the first token, and any token after whitespace."""
    starts = [0] if spans else []
    for i in range(1, len(spans)):
        gap = text[spans[i - 1][1] : spans[i][0]]
        leading = text[spans[i][0] : spans[i][0] + 1]
        if any(ch.isspace() for ch in gap) or leading.isspace():
            starts.append(i)
    return starts


def chunk_windows(token_count: int, starts: Sequence[int], budget: int, overlap: int) -> list[Span]:
    """Return [start, end) token windows of at most ``budget`` tokens covering all ``token_count`` tokens.

    ``starts`` are the sorted word-start indices. A window ends before the last word start that fits; the
    next one begins at the first word start within ``overlap`` tokens of the previous end. When a single
    word spans that whole range (a long URL, an identifier), it begins at that word's start instead, back
    at the previous word boundary, so the windows still overlap (by more than ``overlap``); only when that
    window would end no further than the previous one do they not overlap.
    """
    if budget < 1:
        raise ValueError(f"a chunk must hold at least one token; got a budget of {budget}")
    if token_count == 0:
        return []
    windows: list[Span] = []
    start = 0
    while True:
        end = _window_end(start, token_count, starts, budget)
        windows.append((start, end))
        if end >= token_count:
            return windows
        start = _next_start(start, end, token_count, starts, budget, overlap)


def _window_end(start: int, token_count: int, starts: Sequence[int], budget: int) -> int:
    end = min(start + budget, token_count)
    if end < token_count:
        # The last word start in (start, end]: cutting right before it keeps the word whole.
        i = bisect.bisect_right(starts, end) - 1
        if i >= 0 and starts[i] > start:
            end = starts[i]
    return end


def _next_start(start: int, end: int, token_count: int, starts: Sequence[int], budget: int, overlap: int) -> int:
    if overlap <= 0:
        return end
    j = bisect.bisect_left(starts, max(end - overlap, start + 1))
    if j < len(starts) and starts[j] < end:
        return starts[j]
    # One word covers the overlap range: back to its start, if the window from there still gets further.
    if j > 0 and starts[j - 1] > start and _window_end(starts[j - 1], token_count, starts, budget) > end:
        return starts[j - 1]
    return end


def pieces_of(text: str, spans: Sequence[Span], budget: int, overlap: int, overhead: int) -> list[ChunkPiece]:
    """Return the chunks of one text from its token spans; ``overhead`` is the model's tokens around each."""
    pieces: list[ChunkPiece] = []
    for start, end in chunk_windows(len(spans), word_starts(text, spans), budget, overlap):
        first, last = spans[start][0], spans[end - 1][1]
        chunk = text[first:last]
        stripped = chunk.strip()
        first += len(chunk) - len(chunk.lstrip())
        pieces.append(ChunkPiece(stripped, first, first + len(stripped), end - start + overhead))
    return pieces


class TokenChunker:
    """Chunks texts by an Encoder's tokenizer, leaving room for its special tokens and passage prompt."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        # Tokens every input carries besides its own text: [CLS]/[SEP] and the like, plus the prompt.
        self.overhead = encoder.count_tokens([""], is_query=False)[0]

    def chunk(self, texts: list[str], max_tokens: int, overlap_tokens: int) -> list[list[ChunkPiece]]:
        """Return each text's chunks; ``max_tokens`` is capped at the model's own maximum sequence length."""
        budget = min(max_tokens, self.encoder.max_seq_length) - self.overhead
        if budget < 1:
            raise ValueError(
                f"chunks of {max_tokens} tokens leave no room for text: model {self.encoder.name} adds "
                f"{self.overhead} tokens (special tokens and prompt) to each; raise the collection's max_tokens"
            )
        overlap = min(overlap_tokens, budget // 2)
        all_spans = self.encoder.token_spans(texts)
        return [
            pieces_of(text, spans, budget, overlap, self.overhead) for text, spans in zip(texts, all_spans, strict=True)
        ]


class EncoderModel:
    """An Encoder as ingestion sees it (``app.collections.contracts.IngestModel``): chunk, then embed documents."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.dimension = encoder.dimension
        self.chunker = TokenChunker(encoder)

    def chunk(self, texts: list[str], max_tokens: int, overlap_tokens: int) -> list[list[ChunkPiece]]:
        return self.chunker.chunk(texts, max_tokens, overlap_tokens)

    def embed(self, texts: list[str]) -> Vectors:
        from workers.runtime.m3 import encode_hybrid, m3_heads_of

        if m3_heads_of(self.encoder) is not None:
            # BGE-M3: the dense vector and the sparse token weights from one forward pass.
            output = encode_hybrid(self.encoder, texts, return_sparse=True)
            return Vectors(output.dense, output.sparse, len(self.encoder.tokenizer))
        # Documents get the family's passage prompt (E5 "passage: "), as the chunker counted them.
        encoded = self.encoder.encode_counted(texts, is_query=False)
        return Vectors(encoded.vectors, tokens=int(sum(encoded.token_counts)))


def load_model(name: str) -> EncoderModel:
    """Return the ingestion view of model ``name``, loading it in this (child) process if needed."""
    from workers.runtime.registry import get_encoder  # torch is imported here, in the child only

    # Cheap to wrap per batch, and holding no reference keeps the registry's evictions effective.
    return EncoderModel(get_encoder(name))
