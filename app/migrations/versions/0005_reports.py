"""reports and maintenance: the jobs heartbeat readiness reads

Revision ID: 6e4a5d3f0006
Revises: 7a1e0c0d0007
Create Date: 2026-11-24 10:51:11.153731
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "6e4a5d3f0006"
down_revision: str | None = "7a1e0c0d0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "heartbeats",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("beat_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_heartbeats")),
    )


def downgrade() -> None:
    op.drop_table("heartbeats")
