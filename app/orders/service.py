"""Orders: placing one (idempotently), reading and listing them, the status machine, the CSV
export's query. Writes go through `app.core.repository` (one unit of work per change); what
follows a commit (the confirmation mail's task, the owner's notification) is registered with
`after_commit`, so it never announces a change that was rolled back."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.exc import StaleDataError

from app.auth.models import User
from app.auth.principal import Principal
from app.core.config import Settings
from app.core.db import utcnow
from app.core.notifier import Notifier
from app.core.pagination import after_cursor, cursor_page
from app.core.repository import Repository, unit_of_work
from app.email import service as outbox
from app.exports.service import AnySelect
from app.items.models import Currency
from app.jobs.service import Jobs
from app.orders.errors import (
    IdempotencyKeyReused,
    NotOrderOwner,
    OrderNotFound,
    OrderTooLarge,
    StaleVersion,
    StatusChangeRefused,
    StatusNotYours,
    VersionRequired,
)
from app.orders.models import Order, OrderLine, OrderStatus
from app.orders.rates import ExchangeRates
from app.orders.schemas import (
    CurrencyTotal,
    OrderCreate,
    OrderLineCreate,
    OrderLineRead,
    OrderRead,
    ShippingAddressRead,
)

orders = Repository(Order, order_columns={"id": Order.id, "created_at": Order.created_at})
CONFIRMATION_TEMPLATE = "order_confirmation"
NOTIFICATION_KIND = "order.status"

# The status machine. Owners pay and cancel; shipping and delivery are the shop's (admins).
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PAID, OrderStatus.CANCELLED}),
    OrderStatus.PAID: frozenset({OrderStatus.SHIPPED, OrderStatus.CANCELLED}),
    OrderStatus.SHIPPED: frozenset({OrderStatus.DELIVERED}),
    OrderStatus.DELIVERED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}
OWNER_MAY_SET = frozenset({OrderStatus.PAID, OrderStatus.CANCELLED})
CENT = Decimal("0.01")
WITH_LINES = (selectinload(Order.lines),)  # one query for a whole page's lines

EXPORT_COLUMNS = (
    Order.id, Order.status, Order.total_jpy, Order.postal_code, Order.prefecture, Order.city,
    Order.street, Order.building, Order.notes, Order.created_at, Order.updated_at,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OrderFilters:
    status: OrderStatus | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.status is not None:
            clauses.append(Order.status == self.status)
        if self.created_from is not None:
            clauses.append(Order.created_at >= self.created_from)
        if self.created_to is not None:
            clauses.append(Order.created_at < self.created_to)
        return clauses


def _visible_to(viewer: Principal) -> list[ColumnElement[bool]]:
    return [] if viewer.is_admin else [Order.owner_id == viewer.id]


# -- reading ----------------------------------------------------------------------------------


def etag_of(order: Order) -> str:
    return f'"order-{order.id}-v{order.version}"'


def order_read(order: Order) -> OrderRead:
    """The order as the API shows it; its lines must be loaded (they never load lazily)."""
    totals: dict[Currency, Decimal] = {}
    for line in order.lines:
        totals[line.currency] = totals.get(line.currency, Decimal(0)) + (
            line.unit_price * line.quantity
        )
    return OrderRead.model_validate(
        {
            **{name: getattr(order, name) for name in _READ_FIELDS},
            "lines": order.lines,
            "shipping_address": ShippingAddressRead.model_validate(order),
            "totals": [CurrencyTotal(currency=c, amount=a) for c, a in totals.items()],
        }
    )


_READ_FIELDS = (
    "id", "owner_id", "status", "version", "notes", "total_jpy", "rates_jpy", "created_at",
    "updated_at",
)  # fmt: skip


async def get_visible(*, session: AsyncSession, order_id: int, viewer: Principal) -> Order:
    """The order with its lines, for its owner or an admin."""
    order = await orders.get(session, order_id, options=WITH_LINES)
    if order is None:
        raise OrderNotFound(order_id)
    if order.owner_id != viewer.id and not viewer.is_admin:
        raise NotOrderOwner()
    return order


async def list_after_cursor(
    *,
    session: AsyncSession,
    viewer: Principal,
    filters: OrderFilters,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Order], str | None]:
    """Newest first: the viewer's own orders (an admin's: everyone's). Two queries whatever
    the page's size: the orders, then all their lines (selectinload)."""
    statement = orders.select(*_visible_to(viewer), *filters.where()).options(*WITH_LINES)
    statement = after_cursor(statement, Order.id, cursor=cursor, limit=limit)
    rows: Sequence[Order] = (await session.execute(statement)).scalars().all()
    return cursor_page(rows, limit=limit, key=lambda order: order.id)


def export_query(*, viewer: Principal) -> AnySelect:
    return select(*EXPORT_COLUMNS).where(*_visible_to(viewer)).order_by(Order.id)


# -- placing an order -------------------------------------------------------------------------


def body_hash(data: OrderCreate) -> str:
    """The validated body, so `1` and `"1.00"` for a price are the same request."""
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


def _check_limits(data: OrderCreate, settings: Settings) -> None:
    if len(data.lines) > settings.order_max_lines:
        raise OrderTooLarge("body.lines", settings.order_max_lines)
    for index, line in enumerate(data.lines):
        if line.quantity > settings.order_max_quantity:
            raise OrderTooLarge(f"body.lines.{index}.quantity", settings.order_max_quantity)


async def _by_key(session: AsyncSession, owner_id: int, key: str) -> Order | None:
    statement = (
        orders.select(Order.owner_id == owner_id, Order.idempotency_key == key)
        .options(*WITH_LINES)
        .execution_options(populate_existing=True)
    )
    found: Order | None = (await session.execute(statement)).scalars().first()
    return found


def _replay(order: Order, digest: str) -> Order:
    if order.idempotency_hash != digest:
        raise IdempotencyKeyReused()
    return order


async def place(
    *,
    session: AsyncSession,
    settings: Settings,
    jobs: Jobs,
    rates: ExchangeRates,
    data: OrderCreate,
    owner: Principal,
    idempotency_key: str | None,
) -> tuple[Order, bool]:
    """The order and whether it is new. With a key already used by this owner within
    ORDER_IDEMPOTENCY_TTL_SECONDS, the order it made (same body) or 409 (another body)."""
    _check_limits(data, settings)
    digest = body_hash(data)
    now = utcnow()
    if idempotency_key is not None:
        previous = await _by_key(session, owner.id, idempotency_key)
        if previous is not None:
            expires = previous.idempotency_expires_at
            if expires is not None and expires > now:
                return _replay(previous, digest), False
            async with unit_of_work(session):  # expired: the key is free again
                previous.idempotency_key = None
    # Rates before any write: a slow provider holds no transaction open.
    rate_of = await rates.to_jpy({line.currency for line in data.lines})
    total_jpy = sum(
        (line.unit_price * line.quantity * rate_of[line.currency] for line in data.lines),
        Decimal(0),
    ).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    address = data.shipping_address
    try:
        async with unit_of_work(session) as work:
            order = await orders.create(
                session,
                owner_id=owner.id,
                status=OrderStatus.PENDING,
                postal_code=address.postal_code,
                prefecture=address.prefecture.value,
                city=address.city,
                street=address.street,
                building=address.building,
                notes=data.notes,
                total_jpy=total_jpy,
                rates_jpy={currency.value: str(rate) for currency, rate in rate_of.items()},
                idempotency_key=idempotency_key,
                idempotency_hash=digest if idempotency_key else None,
                idempotency_expires_at=(
                    now + timedelta(seconds=settings.order_idempotency_ttl_seconds)
                    if idempotency_key
                    else None
                ),
                lines=[_line(line) for line in data.lines],
            )
            email_id = await _queue_confirmation(session, settings, order)
            if email_id is not None:
                work.after_commit(lambda: outbox.dispatch(jobs=jobs, email_ids=[email_id]))
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer as its retry would.
        if idempotency_key is None:
            raise
        winner = await _by_key(session, owner.id, idempotency_key)
        if winner is None:
            raise
        return _replay(winner, digest), False
    return order, True


def _line(line: OrderLineCreate) -> OrderLine:
    # In cents, as the column stores it: the answer to the create equals every later read.
    return OrderLine(**{**line.model_dump(), "unit_price": line.unit_price.quantize(CENT)})


async def _queue_confirmation(
    session: AsyncSession, settings: Settings, order: Order
) -> int | None:
    user = await session.get(User, order.owner_id)
    if user is None:  # pragma: no cover - the principal was just authenticated
        return None
    read = order_read(order)
    context: dict[str, Any] = {
        "name": user.full_name or user.username,
        "order_id": order.id,
        "lines": [_line_context(line) for line in read.lines],
        "totals": [f"{total.amount} {total.currency.value}" for total in read.totals],
        "total_jpy": str(order.total_jpy),
    }
    email = outbox.queue(
        session=session,
        settings=settings,
        recipient=user.email,
        subject=f"Your order #{order.id}",
        template=CONFIRMATION_TEMPLATE,
        context=context,
        user_id=user.id,
    )
    await session.flush()
    return email.id


def _line_context(line: OrderLineRead) -> dict[str, Any]:
    return {
        "name": line.name,
        "quantity": line.quantity,
        "unit_price": str(line.unit_price),
        "currency": line.currency.value,
    }


# -- the status machine -----------------------------------------------------------------------


def _matches(if_match: str, etag: str) -> bool:
    # If-Match compares strongly: a weak tag (W/"...") never matches.
    candidates = {candidate.strip() for candidate in if_match.split(",")}
    return "*" in candidates or etag in candidates


async def change_status(
    *,
    session: AsyncSession,
    notifier: Notifier,
    order: Order,
    wanted: OrderStatus,
    actor: Principal,
    if_match: str | None,
) -> Order:
    if if_match is None:
        raise VersionRequired()
    if not _matches(if_match, etag_of(order)):
        raise StaleVersion()
    if wanted not in TRANSITIONS[order.status]:
        raise StatusChangeRefused(order.status, wanted)
    if wanted not in OWNER_MAY_SET and not actor.is_admin:
        raise StatusNotYours(wanted)
    owner_id, order_id = order.owner_id, order.id

    async def notify() -> None:
        await notifier.send_to_user(
            session=session,
            user_id=owner_id,
            kind=NOTIFICATION_KIND,
            title=f"Order #{order_id} is {wanted.value}",
            data={"order_id": order_id, "status": wanted.value},
        )

    try:
        async with unit_of_work(session) as work:
            await orders.update(session, order, {"status": wanted})
            work.after_commit(notify)
    except StaleDataError as exc:  # another writer got there between our read and write
        raise StaleVersion() from exc
    return order


# -- maintenance ------------------------------------------------------------------------------


async def purge_expired_keys(
    *, session: AsyncSession, expired_before: datetime, batch_size: int
) -> int:
    """Clears the Idempotency-Key of orders whose key expired before `expired_before` (the
    orders stay); returns how many. One commit per `batch_size` orders. It ends: a batch only
    takes keys already expired, which no request can set again (a new key expires later).

    A Core UPDATE: the key is no part of what the API shows, so neither the version (the
    ETag: a client's If-Match stays valid) nor `updated_at` moves."""
    purged = 0
    while True:
        batch = (
            select(Order.id)
            .where(Order.idempotency_expires_at < expired_before)
            .order_by(Order.id)
            .limit(batch_size)
        )
        async with unit_of_work(session):
            ids = (await session.scalars(batch)).all()
            if ids:
                await session.execute(
                    update(Order)
                    .where(Order.id.in_(ids))
                    .values(
                        idempotency_key=None,
                        idempotency_hash=None,
                        idempotency_expires_at=None,
                        updated_at=Order.updated_at,
                    )
                    .execution_options(synchronize_session=False)
                )
        purged += len(ids)
        if len(ids) < batch_size:
            return purged
