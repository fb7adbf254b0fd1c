"""Stand-in vectors for tests of the bookkeeping around a model, where no model needs to run."""

from __future__ import annotations

import numpy as np

from app.jobs.service import Encoded

FAKE_DIM = 8


def fake_vectors(model: str, texts: list[str]) -> np.ndarray:
    """Return a deterministic unit vector for each text, from its hash (``model`` is ignored)."""
    rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(FAKE_DIM) for t in texts]
    out = np.asarray(rows, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def fake_encode(model: str, texts: list[str]) -> Encoded:
    """Return ``fake_vectors`` of the texts, counting one token per word."""
    return Encoded(fake_vectors(model, texts), sum(len(t.split()) for t in texts))
