from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, TimestampMixin, str_enum

SLUG_MAX_CHARS = 96


class ArticleStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


class Article(TimestampMixin, Base):
    __tablename__ = "articles"
    # The public listing: published ones, newest first.
    __table_args__ = (Index("ix_articles_status_published_at", "status", "published_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    slug: Mapped[str] = mapped_column(String(SLUG_MAX_CHARS), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[ArticleStatus] = mapped_column(
        str_enum(ArticleStatus), default=ArticleStatus.DRAFT
    )
    # Set when first published, kept through later edits and unpublishing.
    published_at: Mapped[datetime | None]
    author_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
