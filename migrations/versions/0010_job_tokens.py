"""jobs: the tokens a job's batches encoded, for per-tenant usage (GET /usage) and metrics

Revision ID: 20261206_2320_job_tokens
Revises: 0009_batches
Create Date: 2026-12-06 23:20:00.000000

Embedding jobs add the tokens of each batch they encode, ingest jobs the tokens of the chunks they write
(reembed jobs count none yet). Jobs finished before this column count 0 tokens.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261206_2320_job_tokens"
down_revision: str | None = "0009_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tokens", sa.BigInteger(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    op.drop_column("jobs", "tokens")
