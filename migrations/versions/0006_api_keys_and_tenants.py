"""API keys and tenants: hashed keys, and a tenant on jobs, collections, registered models and webhook endpoints

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-22 04:40:00.000000

Rows made before tenants belong to the tenant "default" (the tenant of EMBEDQ_API_KEYS keys and of
requests when auth is off). Collection names and idempotency keys become unique per tenant.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_TABLES = ("jobs", "collections", "registered_models", "webhook_endpoints")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"], unique=False)
    for table in _TENANT_TABLES:
        op.add_column(table, sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False))
    op.add_column("jobs", sa.Column("api_key_id", sa.String(length=32), nullable=True))
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant", "created_at"], unique=False)
    op.create_index("ix_jobs_api_key_status", "jobs", ["api_key_id", "status"], unique=False)
    op.drop_constraint("jobs_idempotency_key_key", "jobs", type_="unique")
    op.create_unique_constraint("uq_jobs_tenant_idempotency_key", "jobs", ["tenant", "idempotency_key"])
    op.drop_constraint("collections_name_key", "collections", type_="unique")
    op.create_unique_constraint("uq_collections_tenant_name", "collections", ["tenant", "name"])
    op.create_index("ix_webhook_endpoints_tenant", "webhook_endpoints", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_endpoints_tenant", table_name="webhook_endpoints")
    op.drop_constraint("uq_collections_tenant_name", "collections", type_="unique")
    op.create_unique_constraint("collections_name_key", "collections", ["name"])
    op.drop_constraint("uq_jobs_tenant_idempotency_key", "jobs", type_="unique")
    op.create_unique_constraint("jobs_idempotency_key_key", "jobs", ["idempotency_key"])
    op.drop_index("ix_jobs_api_key_status", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.drop_column("jobs", "api_key_id")
    for table in _TENANT_TABLES:
        op.drop_column(table, "tenant")
    op.drop_index("ix_api_keys_tenant", table_name="api_keys")
    op.drop_table("api_keys")
