"""All SQL about source jobs' shards and the objects collections were synced from."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.models.source import IngestShard, ShardState, SourceObject


@dataclass(frozen=True)
class NewShard:
    object_uri: str
    format: str
    kind: str
    start: int
    stop: int
    signature: dict[str, Any]


class SourceRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Shards.

    def add_shards(self, job_id: uuid.UUID, shards: Sequence[NewShard]) -> list[int]:
        """Insert a job's shards, numbered from 0; return their numbers."""
        if not shards:
            return []
        rows = [
            {
                "job_id": job_id, "seq": seq, "object_uri": s.object_uri, "format": s.format, "kind": s.kind,
                "start": s.start, "stop": s.stop, "signature": s.signature, "state": ShardState.PENDING.value,
                "attempts": 0, "documents": 0,
            }
            for seq, s in enumerate(shards)
        ]  # fmt: skip
        self.session.execute(insert(IngestShard), rows)
        return list(range(len(rows)))

    def start_shard(self, job_id: uuid.UUID, seq: int) -> IngestShard | None:
        """Count one more delivery of a pending shard and return it; None if it is done (or unknown)."""
        return self.session.scalar(
            update(IngestShard)
            .where(IngestShard.job_id == job_id, IngestShard.seq == seq, IngestShard.state == ShardState.PENDING.value)
            .values(attempts=IngestShard.attempts + 1, updated_at=func.now())
            .returning(IngestShard)
        )

    def claim_shard(self, job_id: uuid.UUID, seq: int, state: ShardState, documents: int, error: str | None) -> bool:
        """Move a pending shard to ``state``; False if a delivery before this one already did."""
        result = self.session.execute(
            update(IngestShard)
            .where(IngestShard.job_id == job_id, IngestShard.seq == seq, IngestShard.state == ShardState.PENDING.value)
            .values(state=state.value, documents=documents, error=error, updated_at=func.now())
        )
        return result.rowcount == 1

    def pending_shards(self, job_id: uuid.UUID) -> list[int]:
        return list(
            self.session.scalars(
                select(IngestShard.seq)
                .where(IngestShard.job_id == job_id, IngestShard.state == ShardState.PENDING.value)
                .order_by(IngestShard.seq)
            )
        )

    def object_states(self, job_id: uuid.UUID, object_uri: str) -> list[str]:
        """Return the states of a job's shards of one object."""
        return list(
            self.session.scalars(
                select(IngestShard.state).where(IngestShard.job_id == job_id, IngestShard.object_uri == object_uri)
            )
        )

    # Synced objects.

    def synced(self, collection_id: int) -> dict[str, dict[str, Any]]:
        """Return the signature of each object the collection was last synced from, by URI."""
        rows = self.session.execute(
            select(SourceObject.object_uri, SourceObject.signature).where(SourceObject.collection_id == collection_id)
        )
        return {uri: signature for uri, signature in rows}

    def objects_of_source(self, collection_id: int, source_uri: str) -> list[str]:
        """Return the URIs of the objects synced from one source (prefix or glob) into the collection."""
        return list(
            self.session.scalars(
                select(SourceObject.object_uri).where(
                    SourceObject.collection_id == collection_id, SourceObject.source_uri == source_uri
                )
            )
        )

    def record_synced(
        self, collection_id: int, object_uri: str, source_uri: str, signature: dict[str, Any], job_id: uuid.UUID
    ) -> None:
        """Remember an object as synced at ``signature``: a later sync skips it while the signature holds."""
        values = {"source_uri": source_uri, "signature": signature, "job_id": job_id, "updated_at": func.now()}
        self.session.execute(
            insert(SourceObject)
            .values(collection_id=collection_id, object_uri=object_uri, **values)
            .on_conflict_do_update(index_elements=["collection_id", "object_uri"], set_=values)
        )

    def forget(self, collection_id: int, object_uris: Sequence[str]) -> None:
        if object_uris:
            self.session.execute(
                delete(SourceObject).where(
                    SourceObject.collection_id == collection_id, SourceObject.object_uri.in_(list(object_uris))
                )
            )
