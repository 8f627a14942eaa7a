from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, utcnow


class StoredFile(Base):
    """An uploaded object's row. The object is written before the row, so a row always has one;
    an object without a row (a crash in between) is an orphan that `purge_orphans` removes."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # made by the server, never a name
    filename: Mapped[str] = mapped_column(String(255))  # sanitized, for display only
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigIntPK)
    sha256: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    item_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    # An image made from another file (JOBS-4): its source and the variant's name. Derived
    # files go with their source (cascade; the orphan purge takes their objects).
    source_file_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("files.id", ondelete="CASCADE"), index=True
    )
    variant: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None]
    height: Mapped[int | None]
    # The task making this file's variants (item images), for the owner to follow.
    variants_task_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Set when the link goes (its item was soft-deleted); the purge removes object and row.
    deleted_at: Mapped[datetime | None] = mapped_column(index=True)
