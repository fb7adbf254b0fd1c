"""Files API expiry: a file's ``expires_at`` (OpenAI's ``expires_after``), a batch's ``output_expires_after``

Revision ID: 20261207_2350_file_expiry
Revises: 20261207_0130_vector_storage
Create Date: 2026-12-07 23:50:00.000000

Files and batches made before these columns never expire.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261207_2350_file_expiry"
down_revision: str | None = "20261207_0130_vector_storage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch_files", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_batch_files_expires_at", "batch_files", ["expires_at"], postgresql_where=sa.text("expires_at IS NOT NULL")
    )
    op.add_column("batches", sa.Column("output_expires_after_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "output_expires_after_s")
    op.drop_index("ix_batch_files_expires_at", table_name="batch_files")
    op.drop_column("batch_files", "expires_at")
