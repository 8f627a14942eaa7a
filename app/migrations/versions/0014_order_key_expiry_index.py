"""order_key_expiry_index: a partial index for the hourly purge of expired Idempotency-Keys

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 17:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = sa.text("idempotency_expires_at IS NOT NULL")


def upgrade() -> None:
    # Only orders that still hold a key: the purge then reads what it clears, not the table.
    op.create_index(
        "ix_orders_idempotency_expires_at",
        "orders",
        ["idempotency_expires_at"],
        postgresql_where=WHERE,
        sqlite_where=WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_idempotency_expires_at", table_name="orders")
