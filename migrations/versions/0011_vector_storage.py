"""collection versions: how their vectors are stored, float32 (pgvector ``vector``) or float16 (``halfvec``)

Revision ID: 20261207_0130_vector_storage
Revises: 20261206_2320_job_tokens
Create Date: 2026-12-07 01:30:00.000000

Versions made before this column hold ``vector`` tables: float32.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261207_0130_vector_storage"
down_revision: str | None = "20261206_2320_job_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "collection_versions",
        sa.Column("storage", sa.String(16), nullable=False, server_default=sa.text("'float32'")),
    )


def downgrade() -> None:
    op.drop_column("collection_versions", "storage")
