"""A BGE-M3 collection keeps each chunk's sparse token weights next to its dense vector; sparse and hybrid search.

Real Postgres (pgvector's sparsevec) and a tiny random BGE-M3 folder; the worker-side functions run in this
process, as in test_ingest_service.py. Expected values come from the runtime's own ``encode_hybrid`` and a
plain dictionary inner product.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from support.ingestion import drain
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import in_models_dir

from app.collections import export, service, upload_writer
from app.collections.repository import CollectionRepository
from app.collections.schemas import ChunkingSpec, CollectionCreate, ReembedRequest, SearchRequest
from app.collections.search import search as search_collection
from app.collections.upload_items import UploadOptions
from app.collections.uploads import UploadReader
from app.collections.vector_store import VectorStore, vector_table
from app.core.config import Settings, get_settings
from app.core.errors import EmbedqError
from app.models.collection import Chunk
from app.models.job import Job
from workers.chunking import load_model
from workers.runtime.m3 import encode_hybrid

M3, BERT = "acme/m3-collection", "tiny-dense-only"
TEXTS = [
    "the cat and the dog on the river",
    "hybrid search with sparse vectors and dense vectors",
    "machine learning data is fast and small",
    "red blue green city music",
    "late interaction score of tokens in a document",
    "the query and the model",
]


@pytest.fixture(scope="module", autouse=True)
def models(session_services) -> None:
    in_models_dir(M3, make_tiny_m3)
    in_models_dir(BERT)


@pytest.fixture
def settings(settings_env: SettingsEnv) -> Settings:
    return get_settings()


def ingest(session: Session, scope, settings, name: str, model: str) -> Job:
    service.create_collection(
        session,
        CollectionCreate(name=name, model=model, chunking=ChunkingSpec(max_tokens=64, overlap_tokens=0)),
        settings,
        ADMIN,
    )
    body = "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)).encode()
    reader = UploadReader("application/x-ndjson", UploadOptions())
    writer = upload_writer.UploadWriter(session, name, settings, {"format": None}, ADMIN)
    writer.open()
    for item in reader.feed(body) + reader.close():
        if writer.add(item):
            writer.flush()
    return drain(session, scope, settings, writer.finish().id)


def stored(session: Session, version_id: int) -> dict[int, tuple[np.ndarray, str | None]]:
    rows = session.execute(text(f"SELECT chunk_id, embedding::text, sparse::text FROM {vector_table(version_id)}"))
    return {cid: (np.asarray(json.loads(dense), dtype=np.float32), sparse) for cid, dense, sparse in rows}


def parse_sparse(literal: str) -> tuple[dict[int, float], int]:
    """pgvector's text form '{1:0.5,7:0.25}/dim' (1-based) -> ({0-based id: weight}, dim)."""
    body, dim = literal.split("/")
    pairs = [p.split(":") for p in body.strip("{}").split(",") if p]
    return {int(i) - 1: float(w) for i, w in pairs}, int(dim)


def active(session: Session, name: str):
    repo = CollectionRepository(session)
    (collection,) = repo.named(name, ADMIN)
    return repo.active_version(collection.id)


def test_an_m3_collection_stores_each_chunks_sparse_weights_next_to_its_dense_vector(
    db_session: Session, scope, settings
) -> None:
    job = ingest(db_session, scope, settings, "m3docs", M3)
    assert (job.status, job.done, job.failed) == ("succeeded", len(TEXTS), 0), job.error
    chunks = db_session.scalars(select(Chunk).order_by(Chunk.id)).all()
    assert len(chunks) == len(TEXTS)
    encoder = load_model(M3).encoder
    expected = encode_hybrid(encoder, [c.text for c in chunks])
    rows = stored(db_session, active(db_session, "m3docs").id)
    for row, chunk in enumerate(chunks):
        dense, sparse = rows[chunk.id]
        np.testing.assert_allclose(dense, expected.dense[row], atol=1e-5)
        assert sparse is not None
        weights, dim = parse_sparse(sparse)
        assert dim == len(encoder.tokenizer)
        assert weights.keys() == expected.sparse[row].keys() and weights
        assert weights == pytest.approx(expected.sparse[row], rel=1e-5)

    # The JSONL export carries them as /vectorize-hybrid does: token id (a string) -> weight.
    collection_id, version_id, _ = export.export_target(db_session, "m3docs", ADMIN)
    lines = [
        json.loads(line) for part in export.export_jsonl(collection_id, version_id, scope) for line in part.splitlines()
    ]
    assert len(lines) == len(chunks)
    by_text = {line["text"]: line["sparse"] for line in lines}
    for row, chunk in enumerate(chunks):
        got = {int(k): v for k, v in by_text[chunk.text].items()}
        assert got == pytest.approx(expected.sparse[row], rel=1e-5)


def test_a_dense_only_collection_leaves_the_sparse_column_empty_and_refuses_sparse_search(
    db_session: Session, scope, settings
) -> None:
    job = ingest(db_session, scope, settings, "densedocs", BERT)
    assert job.status == "succeeded", job.error
    rows = stored(db_session, active(db_session, "densedocs").id)
    assert rows and all(sparse is None for _, sparse in rows.values())
    with pytest.raises(EmbedqError, match="BGE-M3"):
        asyncio.run(
            search_collection(db_session, "densedocs", SearchRequest(query="cat", mode="sparse"), settings, ADMIN)
        )


def test_sparse_and_hybrid_search_score_as_the_formulas_say(db_session: Session, scope, settings) -> None:
    ingest(db_session, scope, settings, "m3docs", M3)
    version = active(db_session, "m3docs")
    encoder = load_model(M3).encoder
    query = "sparse vectors for hybrid search"
    q = encode_hybrid(encoder, [query])
    q_dense, q_sparse, dim = q.dense[0], q.sparse[0], len(encoder.tokenizer)
    chunks = {c.id: c for c in db_session.scalars(select(Chunk))}
    rows = stored(db_session, version.id)
    by_text: dict[str, tuple[float, float]] = {}
    for cid, (dense, sparse) in rows.items():
        weights, _ = parse_sparse(sparse or "{}/1")
        lexical = sum(w * weights.get(i, 0.0) for i, w in q_sparse.items())
        by_text[chunks[cid].text] = (float(dense @ q_dense), lexical)

    repo = VectorStore(db_session)
    common = {"top_k": len(TEXTS), "metadata_filter": None, "ef_search": 40}
    sparse_hits = repo.search_hybrid(version, q_dense, q_sparse, dim, dense_weight=0, sparse_weight=1, **common)
    # Every chunk with a shared token is a candidate, ranked by the plain dictionary inner product.
    want = sorted(((lex, t) for t, (_, lex) in by_text.items() if lex > 0), reverse=True)
    assert [h.text for h in sparse_hits] == [t for _, t in want]
    assert [h.score for h in sparse_hits] == pytest.approx([s for s, _ in want], rel=1e-4)
    assert sparse_hits[0].text == TEXTS[1]

    hybrid_hits = repo.search_hybrid(version, q_dense, q_sparse, dim, dense_weight=0.4, sparse_weight=0.2, **common)
    want_hybrid = sorted(((0.4 * d + 0.2 * s) / 0.6, t) for t, (d, s) in by_text.items())[::-1]
    assert [h.text for h in hybrid_hits] == [t for _, t in want_hybrid]
    assert [h.score for h in hybrid_hits] == pytest.approx([s for s, _ in want_hybrid], rel=1e-4)


def test_reembedding_into_an_m3_model_writes_sparse_weights_too(db_session: Session, scope, settings) -> None:
    ingest(db_session, scope, settings, "moving", BERT)
    job = service.start_reembed(db_session, "moving", ReembedRequest(model=M3), settings, ADMIN)
    job = drain(db_session, scope, settings, job.id)
    assert job.status == "succeeded", job.error
    version = active(db_session, "moving")
    assert version.model == M3
    rows = stored(db_session, version.id)
    assert len(rows) == len(TEXTS) and all(sparse is not None for _, sparse in rows.values())


def test_search_request_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="send `query`, not `vector`"):
        SearchRequest(vector=[0.1, 0.2], mode="hybrid")
    with pytest.raises(ValueError, match="mode 'hybrid' only"):
        SearchRequest(query="x", weights={"dense": 1, "sparse": 1})
    with pytest.raises(ValueError, match="above 0"):
        SearchRequest(query="x", mode="hybrid", weights={"dense": 0, "sparse": 0})
