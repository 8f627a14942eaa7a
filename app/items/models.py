from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import ForeignKey, Numeric, String, Text
from sqlalchemy.orm import Mapped, backref, mapped_column, relationship

from app.auth.models import User
from app.core.db import Base, BigIntPK, TimestampMixin, str_enum


class Currency(StrEnum):
    JPY = "JPY"
    USD = "USD"
    EUR = "EUR"


class Item(TimestampMixin, Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(14, 2), index=True)
    currency: Mapped[Currency] = mapped_column(str_enum(Currency))
    owner_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    deleted_at: Mapped[datetime | None] = mapped_column(index=True)
    # `User.items` comes with it (a backref: auth sits below items). Read-only, and never
    # loaded lazily: a reader asks with selectinload, bounded (app.items.service).
    owner: Mapped[User] = relationship(
        User,
        lazy="raise",
        viewonly=True,
        backref=backref("items", lazy="raise", viewonly=True, order_by="Item.id"),
    )
