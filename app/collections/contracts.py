"""What ingestion and the worker's model exchange: the worker imports this module, never a repository.

The worker implements ``IngestModel`` around its Encoder (``workers/chunking.py``) and hands a
``LoadModel`` and a session scope (``app.core.db.Scope``) to the batch functions of
``app.collections.ingestion``; chunks come back as ``ChunkPiece`` and vectors as ``Vectors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

"""() -> a session scope: one transaction, committed on exit (``app.core.db.session_scope``)."""


@dataclass(frozen=True)
class ChunkPiece:
    """One chunk of a document: its text, its character span in the document, and its token count."""

    text: str
    start: int
    end: int
    token_count: int


@dataclass(frozen=True)
class Vectors:
    """One row per chunk: dense vectors, and for a BGE-M3 model each row's sparse {token id: weight}."""

    dense: np.ndarray
    sparse: Sequence[dict[int, float]] | None = None
    sparse_dimension: int | None = None
    # Tokens the model encoded for these rows (usage per tenant), where the model counted them; else None.
    tokens: int | None = None

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: Sequence[int]) -> Vectors:
        """Return the given rows, in that order."""
        sparse = [self.sparse[i] for i in rows] if self.sparse is not None else None
        return Vectors(self.dense[list(rows)], sparse, self.sparse_dimension)


class IngestModel(Protocol):
    """What ingestion needs from a loaded model (implemented in the worker around its Encoder)."""

    dimension: int

    def chunk(self, texts: list[str], max_tokens: int, overlap_tokens: int) -> list[list[ChunkPiece]]:
        """Return each text's chunks, in order, by the model's own tokenizer."""
        ...

    def embed(self, texts: list[str]) -> Vectors:
        """Return float32 [len(texts), dimension] document vectors (the family's passage prompt applied),
        with each text's sparse token weights when the model has a BGE-M3 sparse head."""
        ...


LoadModel = Callable[[str], IngestModel]
"""(model name) -> the model, loaded in the worker's process."""
