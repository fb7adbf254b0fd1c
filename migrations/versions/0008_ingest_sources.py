"""ingest sources: shards of a source job, the objects a collection was synced from, documents' source object

Revision ID: 20261206_sources
Revises: 0007_model_revisions
Create Date: 2026-12-06 22:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "20261206_sources"
down_revision: str | None = "0007_model_revisions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_shards",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("object_uri", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("stop", sa.BigInteger(), nullable=False),
        sa.Column("signature", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "seq"),
    )
    op.create_table(
        "source_objects",
        sa.Column("collection_id", sa.BigInteger(), nullable=False),
        sa.Column("object_uri", sa.Text(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("signature", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["collection_id"], ["collections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("collection_id", "object_uri"),
    )
    op.add_column("documents", sa.Column("source_object", sa.Text(), nullable=True))
    op.create_index(
        "ix_documents_source_object",
        "documents",
        ["collection_id", "source_object"],
        postgresql_where=sa.text("source_object IS NOT NULL"),
    )
    for column in ("shards_total", "shards_done", "shards_failed"):
        op.add_column("jobs", sa.Column(column, sa.Integer(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    for column in ("shards_failed", "shards_done", "shards_total"):
        op.drop_column("jobs", column)
    op.drop_index("ix_documents_source_object", table_name="documents")
    op.drop_column("documents", "source_object")
    op.drop_table("source_objects")
    op.drop_table("ingest_shards")
