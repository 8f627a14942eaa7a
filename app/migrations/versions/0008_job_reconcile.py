"""jobs: what the reconciler needs to send a lost job again (args, queue, worker, requeues)
and an index for its query

Revision ID: 7a1c9e2f0008
Revises: 4c2e3b1d0004
Create Date: 2026-12-03 11:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7a1c9e2f0008"
down_revision: str | None = "4c2e3b1d0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite does them in place (a batch would copy the table).
    op.add_column("jobs", sa.Column("args", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("kwargs", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("queue", sa.String(length=50), nullable=True))
    op.add_column("jobs", sa.Column("worker", sa.String(length=255), nullable=True))
    # Existing rows were never re-queued: 0, not NULL (the model's server default too).
    op.add_column("jobs", sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))
    # The reconciler's query (open rows, oldest first) without a scan of the finished ones.
    op.create_index("ix_jobs_state_created_at", "jobs", ["state", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_state_created_at", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("requeues")
        batch_op.drop_column("worker")
        batch_op.drop_column("queue")
        batch_op.drop_column("kwargs")
        batch_op.drop_column("args")
