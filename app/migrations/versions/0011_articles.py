"""articles: per-user permission grants, articles, and the full-text indexes search reads

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-03 14:30:00.000000

The full-text parts (app.core.fulltext): on PostgreSQL a generated, GIN-indexed tsvector
column on items and on articles; on SQLite an FTS5 table per table, kept current by triggers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db
from app.core import fulltext

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The searched tables and their text columns, in weight order (frozen here: a later change of
# a search source is a migration of its own).
INDEXED = {"items": ("title", "description"), "articles": ("title", "body")}


def upgrade() -> None:
    op.create_table(
        "user_permissions",
        sa.Column("user_id", BIGINT, nullable=False),
        sa.Column("permission", sa.String(length=64), nullable=False),
        sa.Column("granted_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("granted_by", BIGINT, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_permissions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "permission", name=op.f("pk_user_permissions")),
    )
    op.create_table(
        "articles",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("slug", sa.String(length=96), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("draft", "published", name="articlestatus", native_enum=False),
            nullable=False,
        ),
        sa.Column("published_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("author_id", BIGINT, nullable=True),
        sa.Column("created_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["users.id"],
            name=op.f("fk_articles_author_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_articles")),
        sa.UniqueConstraint("slug", name=op.f("uq_articles_slug")),
    )
    op.create_index(op.f("ix_articles_author_id"), "articles", ["author_id"], unique=False)
    op.create_index(op.f("ix_articles_created_at"), "articles", ["created_at"], unique=False)
    op.create_index(
        "ix_articles_status_published_at", "articles", ["status", "published_at"], unique=False
    )
    dialect = op.get_bind().dialect.name
    for table, columns in INDEXED.items():
        for statement in fulltext.upgrade_ddl(dialect, table, columns):
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in INDEXED:
        for statement in fulltext.downgrade_ddl(dialect, table):
            op.execute(statement)
    op.drop_index("ix_articles_status_published_at", table_name="articles")
    op.drop_index(op.f("ix_articles_created_at"), table_name="articles")
    op.drop_index(op.f("ix_articles_author_id"), table_name="articles")
    op.drop_table("articles")
    op.drop_table("user_permissions")
