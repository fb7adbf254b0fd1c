"""Transactions that lock the same documents at once, on the session's real Postgres: uploads upserting them in
different orders, and a worker's batch locking them while an upload upserts them. Threads start behind a
barrier, with documents enough that the statements overlap; a deadlock fails the test with Postgres's error.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from support.fleet import at_once

from app.collections.repository import CollectionRepository, DocumentInput
from app.collections.upload_writer import content_hash
from app.models.collection import Collection, Document

DOCUMENTS = 200
ROUNDS = 5


def new_collection(engine: Engine, name: str) -> int:
    with Session(engine) as session:
        collection = Collection(name=name, max_tokens=64, overlap_tokens=0)
        session.add(collection)
        session.commit()
        return collection.id


def documents(round_: int) -> list[DocumentInput]:
    """Return the documents ``doc-000``... in name order, with a text of this round (so each round changes them)."""
    texts = [f"document {i}, round {round_}" for i in range(DOCUMENTS)]
    return [DocumentInput(f"doc-{i:03d}", t, {}, content_hash(t)) for i, t in enumerate(texts)]


def upsert(engine: Engine, collection_id: int, docs: Sequence[DocumentInput]) -> int:
    with Session(engine) as session:
        pending = CollectionRepository(session).upsert_documents(collection_id, docs)
        session.commit()
    return len(pending)


def lock_pending(engine: Engine, hashes: dict[int, str]) -> int:
    with Session(engine) as session:
        locked = CollectionRepository(session).lock_pending(hashes)
        session.commit()
    return len(locked)


def test_uploads_upserting_the_same_documents_in_opposite_orders_do_not_deadlock(
    db_engine: Engine, clean_state
) -> None:
    collection_id = new_collection(db_engine, "opposite-orders")
    for round_ in range(ROUNDS):
        docs = documents(round_)
        answers = at_once([partial(upsert, db_engine, collection_id, order) for order in (docs, docs[::-1])])
        assert answers == [DOCUMENTS, DOCUMENTS]  # new or changed: both leave every document pending


def test_a_batch_locking_documents_while_an_upload_upserts_them_does_not_deadlock(
    db_engine: Engine, clean_state
) -> None:
    # Inserted last name first, so their ids run the other way from their names.
    collection_id = new_collection(db_engine, "ids-against-names")
    for doc in documents(0)[::-1]:
        upsert(db_engine, collection_id, [doc])
    for round_ in range(1, ROUNDS + 1):
        with Session(db_engine) as session:
            rows = session.execute(
                select(Document.id, Document.content_hash).where(Document.collection_id == collection_id)
            )
            hashes = {doc_id: digest for doc_id, digest in rows}
        assert len(hashes) == DOCUMENTS
        batch = partial(lock_pending, db_engine, hashes)
        at_once([batch, partial(upsert, db_engine, collection_id, documents(round_))])
