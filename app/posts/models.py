"""Posts and their comments. Posts are full-text indexed over title and body (migration 0012,
app/core/fulltext.py: a generated tsvector on PostgreSQL, an FTS5 table on SQLite), which the
models don't map; app/search reads it."""

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, backref, mapped_column, relationship

from app.auth.models import User
from app.core.db import Base, BigIntPK, TimestampMixin

# The widest a title or body may ever be; settings may only narrow them (POST_*_MAX_CHARS).
TITLE_MAX_CHARS = 200
POST_BODY_MAX_CHARS = 20_000
COMMENT_BODY_MAX_CHARS = 4_000


class Post(TimestampMixin, Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    author_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(TITLE_MAX_CHARS))
    body: Mapped[str] = mapped_column(Text)

    # lazy="raise" both ways: an async session can't load lazily, and a listing that forgot
    # its eager load should fail in tests rather than issue one query per row. User.posts is a
    # backref so auth, below this package, never names Post; passive_deletes leaves a deleted
    # user's posts to the foreign key's ON DELETE CASCADE instead of loading them.
    author: Mapped[User] = relationship(
        lazy="raise",
        backref=backref("posts", lazy="raise", passive_deletes=True, order_by="Post.id"),
    )


class Comment(TimestampMixin, Base):
    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    post_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("posts.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    body: Mapped[str] = mapped_column(Text)

    author: Mapped[User] = relationship(lazy="raise")


# Serves both a post's comment page (post_id =, id <, newest first) and the comment counts of
# a page of posts (count per post_id), each from the index alone.
Index("ix_comments_post_id_id", Comment.post_id, Comment.id)
