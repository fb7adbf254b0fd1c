"""Documents: ``pending_metadata``, the metadata of a new text not yet embedded

Revision ID: 20261208_0230_pending_metadata
Revises: 20261207_2350_file_expiry
Create Date: 2026-12-08 02:30:00.000000

An updated document keeps the metadata of the text its stored chunks were cut from until its new text is
embedded; the new metadata waits here. Null for every document made before (none is mid-update in a
consistent way to recover: their metadata already was the new one).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "20261208_0230_pending_metadata"
down_revision: str | None = "20261207_2350_file_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("pending_metadata", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("documents", "pending_metadata")
