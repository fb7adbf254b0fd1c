"""registered models: the artifact revision every worker downloads

Revision ID: 0007_model_revisions
Revises: 0005
Create Date: 2026-12-06 22:40:00.000000

A registered model's files live in the artifact store under models/<name>/@<revision>/; the row names the
revision workers must serve. Rows made before the store have none: their folder is only where it was trained.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_model_revisions"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("registered_models", sa.Column("revision", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("registered_models", "revision")
