"""user_age: an optional age (1-150) on the user (issue 15 item 5)

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-03 14:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: existing rows simply have no age; the API validates the range.
    op.add_column("users", sa.Column("age", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite has it since 3.35): a batch copy of the table would lose
    # the lower(username) index, which SQLite can't reflect.
    op.drop_column("users", "age")
