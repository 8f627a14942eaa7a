"""Orders and their lines. `Order.lines` and `User.orders` are ORM relationships that never
load lazily (`lazy="raise"`): a listing says what it loads (`selectinload`), so a page can't
turn into one query per row by accident."""

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, backref, mapped_column, relationship

from app.auth.models import User
from app.core.db import Base, BigIntPK, TimestampMixin, str_enum
from app.items.models import Currency


class OrderStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class Order(TimestampMixin, Base):
    __tablename__ = "orders"
    __table_args__ = (
        # The owner's list: WHERE owner_id = ? [AND id < cursor] ORDER BY id DESC.
        Index("ix_orders_owner_id_id", "owner_id", "id"),
        # One order per key and user; NULL (no key) repeats freely on both backends.
        UniqueConstraint("owner_id", "idempotency_key", name="uq_orders_owner_id_idempotency_key"),
        # The hourly key purge (orders.tasks): WHERE idempotency_expires_at < ?. Partial: most
        # orders have no key, or no longer one, and stay out of the index.
        Index(
            "ix_orders_idempotency_expires_at",
            "idempotency_expires_at",
            postgresql_where=text("idempotency_expires_at IS NOT NULL"),
            sqlite_where=text("idempotency_expires_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[OrderStatus] = mapped_column(
        str_enum(OrderStatus), default=OrderStatus.PENDING, index=True
    )
    # Bumped by SQLAlchemy on every UPDATE (version_id_col): the ETag, and a concurrent writer
    # holding an old version fails instead of overwriting.
    version: Mapped[int] = mapped_column(Integer)
    postal_code: Mapped[str] = mapped_column(String(8))
    prefecture: Mapped[str] = mapped_column(String(8))
    city: Mapped[str] = mapped_column(String(100))
    street: Mapped[str] = mapped_column(String(200))
    building: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    # Converted when the order is placed, with the rates used: an order's price does not move.
    total_jpy: Mapped[Decimal] = mapped_column(Numeric(20, 0))
    rates_jpy: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    idempotency_expires_at: Mapped[datetime | None]

    lines: Mapped[list["OrderLine"]] = relationship(
        back_populates="order",
        order_by="OrderLine.id",
        cascade="all, delete-orphan",
        lazy="raise",
        passive_deletes=True,
    )
    # `User.orders` is declared from this side (a backref): auth sits below orders and must
    # not name them.
    owner: Mapped[User] = relationship(
        User, lazy="raise", backref=backref("orders", lazy="raise", passive_deletes=True)
    )

    __mapper_args__ = {"version_id_col": version}


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    order_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[Currency] = mapped_column(str_enum(Currency))

    order: Mapped[Order] = relationship(back_populates="lines", lazy="raise")
