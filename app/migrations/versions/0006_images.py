"""images: derived files (variants) linked to their source, with their size and task

Revision ID: 5d3f4c2e0005
Revises: 6e4a5d3f0006
Create Date: 2026-11-24 10:51:09.997542
"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d3f4c2e0005"
down_revision: str | None = "6e4a5d3f0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite's batch copy of `files` reflects `users` through the foreign key; the expression
    # index it can't reflect belongs to `users`, which is not copied, so nothing is lost.
    with (
        warnings.catch_warnings(),
        op.batch_alter_table("files", schema=None) as batch_op,
    ):
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        batch_op.add_column(
            sa.Column(
                "source_file_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("width", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("height", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("variants_task_id", sa.String(length=36), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_files_source_file_id"), ["source_file_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_files_source_file_id_files"),
            "files",
            ["source_file_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with (
        warnings.catch_warnings(),
        op.batch_alter_table("files", schema=None) as batch_op,
    ):
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        batch_op.drop_constraint(batch_op.f("fk_files_source_file_id_files"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_files_source_file_id"))
        batch_op.drop_column("variants_task_id")
        batch_op.drop_column("height")
        batch_op.drop_column("width")
        batch_op.drop_column("variant")
        batch_op.drop_column("source_file_id")
