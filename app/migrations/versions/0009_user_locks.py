"""user_locks: the per-user mutex behind storage quotas and the active-jobs cap (issue 13)

Revision ID: 0009
Revises: 7a1c9e2f0008
Create Date: 2026-12-03 12:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "7a1c9e2f0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_locks",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("taken", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "scope", name=op.f("pk_user_locks")),
    )


def downgrade() -> None:
    op.drop_table("user_locks")
