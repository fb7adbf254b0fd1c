"""Ingestion on a real Postgres with tiny real models: uploads, batches, idempotence, search, reembed, export.

Worker-side functions run in this process (no Celery worker): ``drain`` plays the bulk queue.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from support.ingestion import drain
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.texts import SENTENCES
from support.tiny_models import in_models_dir

from app.collections import export, ingestion, service, upload_writer
from app.collections.contracts import Vectors
from app.collections.copy_format import ChunkRow
from app.collections.repository import CollectionRepository
from app.collections.schemas import ChunkingSpec, CollectionCreate, JobNotifications, ReembedRequest, SearchRequest
from app.collections.search import search as search_collection
from app.collections.upload_items import UploadOptions
from app.collections.uploads import UploadReader
from app.collections.vector_store import VectorStore, vector_table
from app.core.config import Settings, get_settings
from app.core.errors import ConflictError, InvalidRequestError
from app.jobs.schemas import JobOut
from app.models.collection import Chunk, Document, IngestBatch, VectorStorage
from app.models.job import Job
from app.models.webhook import WebhookEvent
from workers.chunking import load_model

MODEL, OTHER_MODEL = "tiny-ingest", "tiny-ingest-b"


@pytest.fixture(scope="module", autouse=True)
def tiny_models(session_services) -> None:
    for name, seed in ((MODEL, 0), (OTHER_MODEL, 1)):
        in_models_dir(name, seed=seed)


@pytest.fixture
def settings(settings_env: SettingsEnv) -> Settings:
    settings_env.set(EMBEDQ_INGEST_BATCH_DOCUMENTS="8")
    return get_settings()


def long_text(i: int) -> str:
    return " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 6)).lower()


def corpus(n: int = 30) -> list[dict]:
    return [
        {"id": f"doc-{i}", "text": long_text(i), "metadata": {"lang": "fr" if i % 3 == 0 else "en", "n": i}}
        for i in range(n)
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def make_collection(session: Session, settings, name: str = "docs", max_tokens: int = 24, overlap: int = 6) -> None:
    payload = CollectionCreate(
        name=name, model=MODEL, chunking=ChunkingSpec(max_tokens=max_tokens, overlap_tokens=overlap)
    )
    service.create_collection(session, payload, settings, ADMIN)


def upload(
    session: Session,
    settings,
    body: bytes,
    name: str = "docs",
    content_type: str = "application/x-ndjson",
    piece: int = 97,
    notifications: JobNotifications | None = None,
) -> Job:
    reader = UploadReader(content_type, UploadOptions())
    writer = upload_writer.UploadWriter(session, name, settings, {"format": None}, ADMIN, notifications)
    writer.open()
    pieces = [reader.feed(body[start : start + piece]) for start in range(0, len(body), piece)]
    for item in [item for items in pieces for item in items] + reader.close():
        if writer.add(item):
            writer.flush()
    return writer.finish()


def chunk_vectors(session: Session, version_id: int) -> dict[int, np.ndarray]:
    rows = session.execute(text(f"SELECT chunk_id, embedding::text FROM {vector_table(version_id)}"))
    return {cid: np.asarray(json.loads(v), dtype=np.float32) for cid, v in rows}


def active_version(session: Session, name: str = "docs"):
    repo = CollectionRepository(session)
    (collection,) = repo.named(name, ADMIN)
    return repo.active_version(collection.id)


def test_jsonl_upload_is_chunked_embedded_written_and_indexed(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    job = upload(db_session, settings, jsonl(corpus(30)))
    assert job.status == "running" and job.total == 30 and job.input_complete
    batches = db_session.scalars(select(IngestBatch).where(IngestBatch.job_id == job.id)).all()
    assert len(batches) == 4 and sum(len(b.document_ids) for b in batches) == 30

    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done, job.failed, job.skipped) == ("succeeded", 30, 0, 0), job.error
    docs = db_session.scalars(select(Document).order_by(Document.id)).all()
    assert {d.status for d in docs} == {"ready"}
    chunks = db_session.scalars(select(Chunk)).all()
    assert len(chunks) == sum(d.chunk_count for d in docs) == job.chunks_done == job.chunks_total > 30

    version = active_version(db_session)
    assert (version.dimension, version.index_status) == (32, "ready")
    index = db_session.scalar(
        text("SELECT indexdef FROM pg_indexes WHERE tablename = :t"), {"t": vector_table(version.id)}
    )
    assert index is not None and "hnsw" in db_session.scalar(
        text("SELECT string_agg(indexdef, ' ') FROM pg_indexes WHERE tablename = :t"), {"t": vector_table(version.id)}
    )
    stored = chunk_vectors(db_session, version.id)
    encoder = load_model(MODEL).encoder
    want = encoder.encode([c.text for c in chunks], is_query=False)
    got = np.stack([stored[c.id] for c in chunks])
    np.testing.assert_allclose(got, want, atol=1e-6)

    view = JobOut.of(job)
    assert view.ingest is not None and view.ingest.chunks.done == len(chunks) and view.ingest.errors == []
    assert view.links.errors == f"/jobs/{job.id}/errors" and view.ingest.eta_s is None


def test_reingest_skips_unchanged_documents_and_replaces_changed_ones(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    rows = corpus(12)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    before = {(c.document_id, c.idx): c.id for c in db_session.scalars(select(Chunk))}

    again = upload(db_session, settings, jsonl(rows))
    assert (again.status, again.total, again.done, again.skipped) == ("succeeded", 12, 12, 12)
    assert db_session.scalars(select(IngestBatch).where(IngestBatch.job_id == again.id)).all() == []
    assert {(c.document_id, c.idx): c.id for c in db_session.scalars(select(Chunk))} == before

    rows[0] = {**rows[0], "text": "an entirely new text about rivers and mountains"}
    rows[1] = {**rows[1], "metadata": {"lang": "de"}}
    changed = upload(db_session, settings, jsonl(rows))
    assert (changed.skipped, changed.total) == (11, 12)
    changed = drain(db_session, scope, settings, changed.id)
    doc0 = db_session.scalar(select(Document).where(Document.external_id == "doc-0"))
    new_chunks = db_session.scalars(select(Chunk).where(Chunk.document_id == doc0.id).order_by(Chunk.idx)).all()
    assert changed.status == "succeeded" and changed.chunks_done == len(new_chunks) == doc0.chunk_count
    assert new_chunks[0].text.startswith("an entirely new") and new_chunks[-1].text.endswith("mountains")
    stored = chunk_vectors(db_session, active_version(db_session).id)
    old_doc0 = {cid for (doc, _), cid in before.items() if doc == doc0.id}
    # doc-0's old chunks and vectors are gone, its new ones are in, every other chunk kept its id and vector.
    assert set(stored) == (set(before.values()) - old_doc0) | {c.id for c in new_chunks}
    doc1 = db_session.scalar(select(Document).where(Document.external_id == "doc-1"))
    assert doc1.meta == {"lang": "de"}


def test_a_failed_update_leaves_no_chunk_of_the_text_the_document_no_longer_holds(
    db_session: Session, scope, settings
) -> None:
    make_collection(db_session, settings)
    rows = corpus(3)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    doc0 = db_session.scalar(select(Document).where(Document.external_id == "doc-0"))
    assert db_session.scalars(select(Chunk).where(Chunk.document_id == doc0.id)).all()

    # Text the model reads no token of: the update fails. Its old chunks were still found by search, while
    # export left the document out.
    update = [{"id": "doc-0", "text": "\u200b\u200b", "metadata": {"v": 2}}]
    failed = drain(db_session, scope, settings, upload(db_session, settings, jsonl(update)).id)
    assert (failed.status, failed.failed) == ("failed", 1) and "no tokens" in (failed.error or "")
    db_session.refresh(doc0)
    assert (doc0.status, doc0.chunk_count, doc0.meta, doc0.pending_meta) == ("failed", 0, {"v": 2}, None)
    assert db_session.scalars(select(Chunk).where(Chunk.document_id == doc0.id)).all() == []
    query = load_model(MODEL).encoder.encode([rows[0]["text"]], is_query=True)[0]
    hits = search(db_session, settings, vector=query.tolist(), top_k=10)
    assert hits and "doc-0" not in {hit.document_id for hit in hits}, hits
    assert len(chunk_vectors(db_session, active_version(db_session).id)) == db_session.scalar(
        select(func.count()).select_from(Chunk)
    )


def test_an_update_keeps_the_old_metadata_with_the_old_chunks_until_its_new_text_is_embedded(
    db_session: Session, scope, settings
) -> None:
    make_collection(db_session, settings)
    rows = corpus(3)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    encoder = load_model(MODEL).encoder
    old_query = encoder.encode([rows[0]["text"]], is_query=True)[0].tolist()
    new_text = "an entirely new text about rivers and mountains"
    pending = upload(db_session, settings, jsonl([{"id": "doc-0", "text": new_text, "metadata": {"v": 2}}]))

    # Not embedded yet: search still has the old text's chunks, and they keep the metadata they came with.
    assert "doc-0" not in {h.document_id for h in search(db_session, settings, vector=old_query, filter={"v": 2})}
    old = [h for h in search(db_session, settings, vector=old_query, filter={"lang": "fr"}) if h.document_id == "doc-0"]
    assert old and all(h.metadata == {"lang": "fr", "n": 0} and h.text in rows[0]["text"] for h in old), old
    doc0 = db_session.scalar(select(Document).where(Document.external_id == "doc-0"))
    assert (doc0.status, doc0.meta, doc0.pending_meta) == ("pending", {"lang": "fr", "n": 0}, {"v": 2})

    drain(db_session, scope, settings, pending.id)
    new_query = encoder.encode([new_text], is_query=True)[0].tolist()
    new = [h for h in search(db_session, settings, vector=new_query, filter={"v": 2}) if h.document_id == "doc-0"]
    assert new and all(h.text in new_text and h.metadata == {"v": 2} for h in new), new
    db_session.refresh(doc0)
    assert (doc0.status, doc0.meta, doc0.pending_meta) == ("ready", {"v": 2}, None)
    # A metadata-only change has no chunks to wait for: it applies at once.
    upload(db_session, settings, jsonl([{"id": "doc-0", "text": new_text, "metadata": {"v": 3}}]))
    db_session.refresh(doc0)
    assert (doc0.status, doc0.meta, doc0.pending_meta) == ("ready", {"v": 3}, None)


def test_a_redelivered_batch_changes_nothing(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    job = upload(db_session, settings, jsonl(corpus(5)))
    first = ingestion.run_ingest_batch(scope, job.id, 0, load_model, settings)
    assert first.documents == 5 and first.chunks > 5
    db_session.refresh(job)
    counts = (job.done, job.failed, job.chunks_done)
    again = ingestion.run_ingest_batch(scope, job.id, 0, load_model, settings)
    assert (again.documents, again.chunks, again.failed) == (0, 0, 0)
    db_session.refresh(job)
    assert (job.done, job.failed, job.chunks_done) == counts

    # The write itself is idempotent on (document, chunk index) too.
    repo = VectorStore(db_session)
    version = active_version(db_session)
    chunk = db_session.scalars(select(Chunk).order_by(Chunk.id)).first()
    row = ChunkRow(chunk.document_id, chunk.idx, "other text", 3, 0, 10)
    assert repo.write_chunks(version.id, [row], Vectors(np.ones((1, 32), dtype=np.float32))) == 0
    db_session.refresh(chunk)
    assert chunk.text != "other text"


def test_bad_lines_fail_their_documents_not_the_job(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    body = (
        jsonl(corpus(3))
        + b'{"id": "broken", \n{"id": "x1"}\n{"id": "latin", "text": "caf\xe9"}\n'
        + jsonl([{"id": "doc-0", "text": "the same id again, later"}])
    )
    job = upload(db_session, settings, body)
    assert (job.total, job.failed) == (7, 4)
    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done, job.failed) == ("succeeded", 3, 4)
    assert "4 documents failed" in job.error
    errors = service.ingest_errors(db_session, job.id, ADMIN, after=0, limit=2)
    assert [(e.document_id, e.line) for e in errors.data] == [(None, 4), ("x1", 5)]
    rest = service.ingest_errors(db_session, job.id, ADMIN, after=errors.next_after, limit=10)
    assert [(e.document_id, e.line) for e in rest.data] == [(None, 6), ("doc-0", 1)]
    assert "appears again at line 7" in rest.data[1].error and rest.next_after is None
    view = JobOut.of(job).ingest
    assert view is not None and [e.line for e in view.errors] == [4, 5, 6, 1]


def test_a_model_failure_fails_its_documents(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)

    def broken(name: str):
        raise RuntimeError("CUDA out of memory (simulated)")

    job = drain(db_session, scope, settings, upload(db_session, settings, jsonl(corpus(4))).id, load=broken)
    assert (job.status, job.done, job.failed) == ("failed", 0, 4)
    assert "CUDA out of memory" in job.error
    assert {d.status for d in db_session.scalars(select(Document))} == {"failed"}
    # Uploading the same documents again retries them.
    retry = drain(db_session, scope, settings, upload(db_session, settings, jsonl(corpus(4))).id)
    assert (retry.status, retry.done, retry.skipped) == ("succeeded", 4, 0)


def search(session: Session, settings, **request) -> list:
    return asyncio.run(search_collection(session, "docs", SearchRequest(**request), settings, ADMIN)).data


def test_search_finds_a_chunk_among_many_identical_ones(db_session: Session, scope, settings) -> None:
    # A document that repeats one paragraph gives many identical vectors; an HNSW graph over them strands the
    # other chunks (pgvector/pgvector#837), so a small collection is searched exactly. MiniLM's real vectors.
    real = "all-MiniLM-L6-v2"
    service.create_collection(db_session, CollectionCreate(name="docs", model=real), settings, ADMIN)
    rows = [{"id": "bm", "text": "doc with big metadata"}, {"id": "bt", "text": "lorem ipsum dolor sit amet " * 12000}]
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    after = [{"id": "after", "text": "added after the index was built"}]
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(after)).id)
    encoder = load_model(real).encoder
    for doc in ("bm", "after"):
        [chunk] = db_session.scalars(select(Chunk).join(Document).where(Document.external_id == doc))
        query = encoder.encode([chunk.text], is_query=False)[0]  # its own vector
        hits = search(db_session, settings, vector=query.tolist(), top_k=10)
        assert hits[0].document_id == doc and hits[0].score > 0.999, [(h.document_id, h.score) for h in hits[:3]]


def test_search_returns_the_planted_match_first_and_filters_by_metadata(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings, max_tokens=64)
    planted = {"id": "planted", "text": "the green river runs past the old mountain city", "metadata": {"lang": "fr"}}
    rows = [*corpus(40), planted]
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    encoder = load_model(MODEL).encoder
    query = encoder.encode(["the green river runs past the old mountain city"], is_query=True)[0]

    hits = search(db_session, settings, vector=query.tolist(), top_k=5)
    assert hits[0].document_id == "planted" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and len(hits) == 5
    french = search(db_session, settings, vector=query.tolist(), top_k=50, filter={"lang": "fr"})
    assert french[0].document_id == "planted" and {h.metadata["lang"] for h in french} == {"fr"}
    french_chunks = db_session.scalar(
        text("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.metadata->>'lang' = 'fr'")
    )
    assert len(french) == french_chunks > 1
    assert search(db_session, settings, vector=query.tolist(), filter={"lang": "xx"}) == []


def test_search_refuses_another_model_or_dimension_naming_both(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    with pytest.raises(InvalidRequestError) as wrong_size:
        search(db_session, settings, vector=[0.1] * 384)
    assert (
        "384 dimensions" in wrong_size.value.message
        and f"32-dimensional vectors of {MODEL}" in wrong_size.value.message
    )
    with pytest.raises(InvalidRequestError) as wrong_model:
        search(db_session, settings, vector=[0.1] * 32, model="sentence-transformers/all-MiniLM-L6-v2")
    message = wrong_model.value.message
    assert MODEL in message and "32-dimensional" in message
    assert "sentence-transformers/all-MiniLM-L6-v2 (384-dimensional)" in message
    assert search(db_session, settings, vector=[0.1] * 32, model=MODEL) == []


def test_reembed_builds_a_new_version_and_switches_search_to_it(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(corpus(10))).id)
    old = active_version(db_session)
    job = service.start_reembed(db_session, "docs", ReembedRequest(model=OTHER_MODEL), settings, ADMIN)
    assert (job.kind, job.total, job.model) == ("reembed", 10, OTHER_MODEL)
    with pytest.raises(ConflictError, match="being re-embedded"):
        upload(db_session, settings, jsonl(corpus(2)))
    assert active_version(db_session).id == old.id

    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done) == ("succeeded", 10), job.error
    new = active_version(db_session)
    assert (new.number, new.model, new.index_status) == (2, OTHER_MODEL, "ready")
    assert not VectorStore(db_session).vector_table_exists(old.id)
    chunks = db_session.scalars(select(Chunk).order_by(Chunk.id)).all()
    stored = chunk_vectors(db_session, new.id)
    encoded = load_model(OTHER_MODEL).encoder.encode_counted([c.text for c in chunks], is_query=False)
    np.testing.assert_allclose(np.stack([stored[c.id] for c in chunks]), encoded.vectors, atol=1e-6)
    # Usage per tenant counts the tokens the new model encoded.
    assert job.tokens == sum(encoded.token_counts) > 0
    view = service.get_collection(db_session, "docs", ADMIN)
    assert view.model == OTHER_MODEL and [v.status for v in view.versions] == ["retired", "active"]
    assert view.counts.vectors == len(chunks) and view.size_bytes > 0


def column_and_index(session: Session, version_id: int) -> tuple[str, str]:
    table = vector_table(version_id)
    column = session.scalar(
        text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
             "AND attname = 'embedding'"), {"t": table}
    )  # fmt: skip
    index = session.scalar(text("SELECT string_agg(indexdef, ' ') FROM pg_indexes WHERE tablename = :t"), {"t": table})
    return column, index


def test_float16_storage_is_halfvec_and_finds_what_float32_finds(db_session: Session, scope, settings) -> None:
    rows = corpus(40)
    for name, storage in (("docs", VectorStorage.FLOAT32), ("half", VectorStorage.FLOAT16)):
        payload = CollectionCreate(
            name=name, model=MODEL, chunking=ChunkingSpec(max_tokens=24, overlap_tokens=6), storage=storage
        )
        service.create_collection(db_session, payload, settings, ADMIN)
        job = drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows), name=name).id)
        assert (job.status, job.done) == ("succeeded", 40), job.error
    full, half = active_version(db_session, "docs"), active_version(db_session, "half")
    assert (full.storage, half.storage) == ("float32", "float16")
    column, index = column_and_index(db_session, half.id)
    assert column == "halfvec(32)" and "halfvec_cosine_ops" in index and "hnsw" in index
    assert column_and_index(db_session, full.id)[0] == "vector(32)"
    # Stored float16 values are the float32 vectors rounded to half precision.
    stored_full, stored_half = chunk_vectors(db_session, full.id), chunk_vectors(db_session, half.id)
    assert len(stored_full) == len(stored_half) > 40
    np.testing.assert_array_equal(
        np.stack(list(stored_half.values())),
        np.stack([v.astype(np.float16).astype(np.float32) for v in stored_full.values()]),
    )

    encoder = load_model(MODEL).encoder
    queries = encoder.encode([long_text(i) + " and more" for i in range(0, 40, 4)], is_query=True)
    for query in queries:
        want = asyncio.run(search_collection(db_session, "docs", SearchRequest(vector=query.tolist()), settings, ADMIN))
        got = asyncio.run(search_collection(db_session, "half", SearchRequest(vector=query.tolist()), settings, ADMIN))
        # The same hits, up to the order of those whose float32 scores are closer than half precision tells
        # apart: each half hit's float32 score is the float32 score at its rank.
        full_scores = {(h.document_id, h.chunk_index): h.score for h in want.data}
        ranked = [full_scores.get((h.document_id, h.chunk_index)) for h in got.data[:5]]
        assert None not in ranked, (got.data[:5], want.data)
        np.testing.assert_allclose(ranked, [h.score for h in want.data[:5]], atol=2e-3)
        np.testing.assert_allclose([h.score for h in got.data], [h.score for h in want.data], atol=2e-3)
    # A query vector's length does not matter: huge or tiny values still fit half precision.
    unscaled = asyncio.run(search_collection(db_session, "half", SearchRequest(vector=query.tolist()), settings, ADMIN))
    for scale in (1e6, 1e-9):
        scaled = SearchRequest(vector=(query * scale).tolist())
        hits = asyncio.run(search_collection(db_session, "half", scaled, settings, ADMIN)).data
        assert [h.document_id for h in hits] == [h.document_id for h in unscaled.data]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in unscaled.data], atol=1e-6)

    view = service.get_collection(db_session, "half", ADMIN)
    assert view.storage == "float16" and [v.storage for v in view.versions] == ["float16"]
    # Export reads halfvec as it reads vector: JSONL through its text form, Parquet through real[].
    collection_id, version_id, dimension = export.export_target(db_session, "half", ADMIN)
    lines = [json.loads(line) for line in b"".join(export.export_jsonl(collection_id, version_id, scope)).splitlines()]
    table = pq.read_table(io.BytesIO(b"".join(export.export_parquet(collection_id, version_id, dimension, scope))))
    assert len(lines) == table.num_rows == len(stored_half)
    exported = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(exported, np.asarray([line["embedding"] for line in lines], dtype=np.float32))
    assert {v.tobytes() for v in exported} == {v.tobytes() for v in stored_half.values()}


def test_reembed_keeps_float16_storage_unless_asked_otherwise(db_session: Session, scope, settings) -> None:
    payload = CollectionCreate(name="docs", model=MODEL, storage=VectorStorage.FLOAT16)
    service.create_collection(db_session, payload, settings, ADMIN)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(corpus(6))).id)
    job = service.start_reembed(db_session, "docs", ReembedRequest(model=OTHER_MODEL), settings, ADMIN)
    assert drain(db_session, scope, settings, job.id).status == "succeeded"
    kept = active_version(db_session)
    assert (kept.number, kept.storage) == (2, "float16")
    assert column_and_index(db_session, kept.id)[0] == "halfvec(32)"
    encoder = load_model(OTHER_MODEL).encoder
    query = encoder.encode([long_text(3)], is_query=True)[0]
    assert search(db_session, settings, vector=query.tolist(), top_k=1)[0].document_id == "doc-3"

    job = service.start_reembed(
        db_session, "docs", ReembedRequest(model=MODEL, storage=VectorStorage.FLOAT32), settings, ADMIN
    )
    assert drain(db_session, scope, settings, job.id).status == "succeeded"
    switched = active_version(db_session)
    assert switched.storage == "float32" and column_and_index(db_session, switched.id)[0] == "vector(32)"


def test_export_round_trips_ids_text_metadata_and_vectors(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    rows = corpus(9)
    drain(db_session, scope, settings, upload(db_session, settings, jsonl(rows)).id)
    collection_id, version_id, dimension = export.export_target(db_session, "docs", ADMIN)
    stored = chunk_vectors(db_session, version_id)
    chunk_by_key = {(c.document_id, c.idx): c for c in db_session.scalars(select(Chunk))}
    doc_ids = {d.external_id: d.id for d in db_session.scalars(select(Document))}

    lines = [json.loads(line) for line in b"".join(export.export_jsonl(collection_id, version_id, scope)).splitlines()]
    assert len(lines) == len(stored)
    meta = {r["id"]: r["metadata"] for r in rows}
    for line in lines:
        chunk = chunk_by_key[(doc_ids[line["document_id"]], line["chunk_index"])]
        assert line["text"] == chunk.text and line["metadata"] == meta[line["document_id"]]
        np.testing.assert_array_equal(np.asarray(line["embedding"], dtype=np.float32), stored[chunk.id])

    data = b"".join(export.export_parquet(collection_id, version_id, dimension, scope, rows_per_group=4))
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == len(lines) and table.schema.field("embedding").type.list_size == 32
    for record in table.to_pylist():
        chunk = chunk_by_key[(doc_ids[record["document_id"]], record["chunk_index"])]
        assert record["text"] == chunk.text and json.loads(record["metadata"]) == meta[record["document_id"]]
        np.testing.assert_array_equal(np.asarray(record["embedding"], dtype=np.float32), stored[chunk.id])


def test_deleting_a_collection_cancels_its_jobs_and_drops_its_vectors(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    job = upload(db_session, settings, jsonl(corpus(3)))
    version = active_version(db_session)
    service.delete_collection(db_session, "docs", ADMIN)
    db_session.refresh(job)
    assert job.status == "cancelled" and "deleted" in job.message
    assert not VectorStore(db_session).vector_table_exists(version.id)
    assert db_session.scalars(select(Document)).all() == []
    assert ingestion.run_ingest_batch(scope, job.id, 0, load_model, settings).documents == 0


def test_the_reaper_requeues_pending_batches_and_closes_a_dead_upload(db_session: Session, scope, settings) -> None:
    make_collection(db_session, settings)
    job = upload(db_session, settings, jsonl(corpus(12)))
    ingestion.run_ingest_batch(scope, job.id, 0, load_model, settings)
    db_session.info.pop("embedq_outbox", None)
    assert ingestion.requeue_ingest(db_session, job) == 1
    assert [(t.name.value, t.args) for t in db_session.info["embedq_outbox"]] == [("ingest.batch", (str(job.id), 1))]

    # An upload whose stream died: nothing pending, input still open. The reaper closes it with the reason.
    writer = upload_writer.UploadWriter(db_session, "docs", settings, {}, ADMIN)
    writer.open()
    for item in UploadReader("application/x-ndjson", UploadOptions()).feed(jsonl(corpus(2))):
        writer.add(item)
    writer.flush()
    stalled = db_session.get(Job, writer.job_id)
    ingestion.run_ingest_batch(scope, stalled.id, 0, load_model, settings)
    db_session.refresh(stalled)
    assert stalled.status == "running" and not stalled.input_complete
    assert ingestion.requeue_ingest(db_session, stalled) == 0
    db_session.refresh(stalled)
    assert stalled.input_complete and stalled.params["upload_error"].startswith("the upload stopped arriving")
    stalled = drain(db_session, scope, settings, stalled.id)
    assert stalled.status == "failed" and "stopped arriving" in stalled.error and stalled.done == 2


def test_ingest_and_reembed_jobs_send_progress_milestones_and_their_end_once(
    db_session: Session, scope, settings
) -> None:
    make_collection(db_session, settings)
    hook = JobNotifications(webhook_url="http://127.0.0.1:9/ingest-hook", progress_milestones=[25, 50, 75])
    job = upload(db_session, settings, jsonl(corpus(30)), notifications=hook)
    assert job.webhook_url == "http://127.0.0.1:9/ingest-hook"
    # 4 batches of 8, 8, 8, 6 documents: 25% and 50% fall due with the 2nd batch, 75% with the 3rd.
    ingestion.run_ingest_batch(scope, job.id, 0, load_model, settings)
    ingestion.run_ingest_batch(scope, job.id, 1, load_model, settings)

    def events(job_id) -> list[tuple[str, int | None]]:
        rows = db_session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).all()
        return sorted((e.type, json.loads(e.body)["data"].get("milestone")) for e in rows)

    assert events(job.id) == [("job.progress", 25), ("job.progress", 50)]
    ingestion.run_ingest_batch(scope, job.id, 1, load_model, settings)  # redelivered: nothing new
    assert events(job.id) == [("job.progress", 25), ("job.progress", 50)]
    assert drain(db_session, scope, settings, job.id).status == "succeeded"
    assert events(job.id) == [("job.progress", 25), ("job.progress", 50), ("job.progress", 75), ("job.succeeded", None)]

    request = ReembedRequest(model=OTHER_MODEL, webhook_url="http://127.0.0.1:9/reembed-hook", progress_milestones=[50])
    reembed = drain(db_session, scope, settings, service.start_reembed(db_session, "docs", request, settings, ADMIN).id)
    assert reembed.status == "succeeded"
    assert events(reembed.id) == [("job.progress", 50), ("job.succeeded", None)]
