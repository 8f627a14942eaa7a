from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, AwareDatetime

from app.auth.dependencies import CurrentPrincipal
from app.core.dependencies import NotifierDep, ServicesDep, SessionDep, SettingsDep
from app.core.errors import ErrorResponse
from app.core.schemas import PrimaryKey
from app.core.streams import LimitedStreamingResponse
from app.exports import service as exports
from app.files.safety import content_disposition
from app.jobs.dependencies import JobsDep
from app.orders import service
from app.orders.models import Order, OrderStatus
from app.orders.rates import ExchangeRatesDep
from app.orders.schemas import OrderCreate, OrderCursorPage, OrderRead, OrderStatusChange

router = APIRouter(prefix="/orders", tags=["orders"])


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # year 1 at +14:00, year 9999 at -14:00
        raise ValueError("out of range once converted to UTC") from exc


Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]+$",
        description="Retry-safe creation: the same key and body return the same order",
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=200,
        pattern=r"^[ -~]*$",
        description="The order's ETag, from reading it (required: 428 without, 412 if stale)",
    ),
]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_UPSTREAM: dict[int | str, dict[str, Any]] = {
    502: _error("The exchange-rate provider failed"),
    504: _error("The exchange-rate provider did not answer in time"),
}
_ETAG_HEADER = {"ETag": {"description": "The order's version", "schema": {"type": "string"}}}


async def order_filters(
    status: OrderStatus | None = None,
    created_from: Annotated[Instant | None, Query(description="Created at or after")] = None,
    created_to: Annotated[Instant | None, Query(description="Created before")] = None,
) -> service.OrderFilters:
    return service.OrderFilters(status, created_from, created_to)


async def visible_order(
    order_id: PrimaryKey, principal: CurrentPrincipal, session: SessionDep
) -> Order:
    return await service.get_visible(session=session, order_id=order_id, viewer=principal)


VisibleOrder = Annotated[Order, Depends(visible_order)]


@router.post(
    "/",
    response_model=OrderRead,
    status_code=status.HTTP_201_CREATED,
    responses={**_UPSTREAM, 201: {"headers": _ETAG_HEADER}},
)
async def place_order(
    data: OrderCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    rates: ExchangeRatesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> OrderRead:
    """Place an order; a confirmation mail is queued. With `Idempotency-Key`, a retry with the
    same body returns the same order (`Idempotent-Replayed: true`), another body gets 409."""
    order, created = await service.place(
        session=session, settings=settings, jobs=jobs, rates=rates, data=data, owner=principal,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    response.headers["ETag"] = service.etag_of(order)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return service.order_read(order)


@router.get("/", response_model=OrderCursorPage)
async def list_orders(
    principal: CurrentPrincipal,
    session: SessionDep,
    filters: Annotated[service.OrderFilters, Depends(order_filters)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> OrderCursorPage:
    """Your orders, newest first (an admin's: everyone's), by status and creation time."""
    rows, next_cursor = await service.list_after_cursor(
        session=session, viewer=principal, filters=filters, limit=limit, cursor=cursor
    )
    return OrderCursorPage(items=[service.order_read(o) for o in rows], next_cursor=next_cursor)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "Rows streamed as they are read"},
        429: {"description": "Over MAX_CONCURRENT_STREAMS_PER_USER downloads at once"},
    },
)
async def export_orders(principal: CurrentPrincipal, services: ServicesDep) -> StreamingResponse:
    """Your orders (an admin's: everyone's) as CSV, streamed."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = exports.stream_export(
        sessionmaker=services.sessionmaker, statement=service.export_query(viewer=principal),
        export_format="csv", batch_size=services.settings.export_batch_size,
        gate=services.streams.database,
    )  # fmt: skip
    return LimitedStreamingResponse(
        chunks,
        limiter=services.streams,
        user_id=principal.id,
        write_timeout=services.settings.stream_write_timeout_seconds,
        media_type=exports.MEDIA_TYPES["csv"],
        headers={"Content-Disposition": content_disposition(f"orders-{stamp}.csv")},
    )


@router.get("/{order_id}", response_model=OrderRead, responses={200: {"headers": _ETAG_HEADER}})
async def read_order(order: VisibleOrder, response: Response) -> OrderRead:
    """One order (owner or admin), with its ETag for a status change."""
    response.headers["ETag"] = service.etag_of(order)
    return service.order_read(order)


@router.patch(
    "/{order_id}/status",
    response_model=OrderRead,
    responses={
        200: {"headers": _ETAG_HEADER},
        412: _error("If-Match is not the order's current ETag"),
        428: _error("If-Match is missing"),
    },
)
async def change_status(
    data: OrderStatusChange,
    order: VisibleOrder,
    principal: CurrentPrincipal,
    session: SessionDep,
    notifier: NotifierDep,
    response: Response,
    if_match: IfMatch = None,
) -> OrderRead:
    """pending -> paid -> shipped -> delivered; cancelled from pending or paid. Owners pay and
    cancel, admins do all; the owner is notified live. Needs `If-Match`."""
    changed = await service.change_status(
        session=session, notifier=notifier, order=order, wanted=data.status, actor=principal,
        if_match=if_match,
    )  # fmt: skip
    response.headers["ETag"] = service.etag_of(changed)
    return service.order_read(changed)
