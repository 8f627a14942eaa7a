from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import WithJsonSchema

from app.auth.dependencies import CurrentPrincipal, ItemWriter, OptionalPrincipal
from app.core.dependencies import CacheDep, SessionDep, SettingsDep, services_of
from app.core.schemas import OptionalId, Page, PageNumber, PerPage, PrimaryKey, SearchTerm
from app.items import service
from app.items.dependencies import HardDelete, OwnedItem
from app.items.models import Currency
from app.items.schemas import (
    PRICE_BOUND_PATTERN,
    ItemCreate,
    ItemCursorPage,
    ItemRead,
    ItemUpdate,
    UserItemsPage,
)

router = APIRouter(prefix="/items", tags=["items"])
list_v1 = APIRouter(prefix="/items", tags=["items"])
list_v2 = APIRouter(prefix="/items", tags=["items"])
# A user's items: under /users, served here because items stand above users in the layers.
by_user = APIRouter(prefix="/users", tags=["users", "items"])

PriceBound = Annotated[
    Decimal | None,
    Query(ge=0, max_digits=14, decimal_places=2),
    # A query value is text: the digits and the cents the validation allows, written out.
    WithJsonSchema({"type": "string", "pattern": PRICE_BOUND_PATTERN}),
]


async def item_filters(
    search: SearchTerm = None,
    min_price: PriceBound = None,
    max_price: PriceBound = None,
    owner_id: OptionalId = None,
    currency: Currency | None = None,
) -> service.ItemFilters:
    return service.ItemFilters(search, min_price, max_price, owner_id, currency)


Filters = Annotated[service.ItemFilters, Depends(item_filters)]


@router.post("/", response_model=ItemRead, status_code=status.HTTP_201_CREATED)
async def create_item(data: ItemCreate, user: ItemWriter, request: Request) -> Response:
    """Create an item owned by you."""
    services = services_of(request)  # on the hottest routes: see app.core.dependencies
    row = await service.create(engine=services.engine, cache=services.cache, data=data, owner=user)
    # Serialized once here: FastAPI would validate the model again against response_model.
    body = ItemRead.model_validate(row).model_dump_json()
    return Response(body, status_code=status.HTTP_201_CREATED, media_type="application/json")


@list_v1.get("/", response_model=Page[ItemRead])
async def list_items(
    request: Request,
    filters: Filters,
    page: PageNumber = 1,
    per_page: PerPage = 20,
    order_by: Annotated[service.ItemOrder, Query()] = "-created_at",
) -> Response:
    """The public listing, with search, price and owner filters."""
    services = services_of(request)  # on the hottest routes: see app.core.dependencies
    body = await service.public_page_json(
        cache=services.cache,
        sessionmaker=services.sessionmaker,
        filters=filters,
        page=page,
        per_page=per_page,
        order_by=order_by,
        max_cached_page=services.settings.cache_list_max_page,
    )
    return Response(body, media_type="application/json")


@router.get("/{item_id}", response_model=ItemRead)
async def read_item(
    item_id: PrimaryKey, viewer: OptionalPrincipal, request: Request
) -> Response | ItemRead:
    """One item; soft-deleted ones are 404 to all but admins."""
    services = services_of(request)  # on the hottest routes: see app.core.dependencies
    sessionmaker = services.sessionmaker
    if viewer is not None and viewer.is_admin:  # admins see deleted items: never cached
        async with sessionmaker() as session:
            item = await service.get_visible(session=session, item_id=item_id, viewer=viewer)
            return ItemRead.model_validate(item)
    body = await service.public_item_json(
        cache=services.cache, sessionmaker=sessionmaker, item_id=item_id
    )
    return Response(body, media_type="application/json")


@router.patch("/{item_id}", response_model=ItemRead)
async def update_item(
    data: ItemUpdate, item: OwnedItem, session: SessionDep, cache: CacheDep
) -> ItemRead:
    """Change an item (owner or admin)."""
    updated = await service.update(session=session, cache=cache, item=item, data=data)
    return ItemRead.model_validate(updated)


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_item(
    item: OwnedItem, hard: HardDelete, session: SessionDep, cache: CacheDep
) -> None:
    """Soft-delete an item (owner or admin); `hard=true` removes it for good (admin)."""
    if not hard:
        await service.soft_delete(session=session, cache=cache, item=item)
        return
    await service.hard_delete(session=session, cache=cache, item=item)


@list_v2.get("/", response_model=ItemCursorPage)
async def list_items_v2(
    session: SessionDep,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ItemCursorPage:
    """The public listing, newest first, by cursor: deep pages cost what the first one does."""
    items, next_cursor = await service.list_after_cursor(
        session=session, filters=filters, limit=limit, cursor=cursor
    )
    return ItemCursorPage(
        items=[ItemRead.model_validate(i) for i in items], next_cursor=next_cursor
    )


@by_user.get("/{user_id}/items", response_model=UserItemsPage)
async def list_user_items(
    user_id: PrimaryKey,
    viewer: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    page: PageNumber = 1,
    per_page: PerPage = 20,
) -> UserItemsPage:
    """A user and a page of their items, oldest first (the user or an admin; per_page is
    clamped to USER_ITEMS_MAX_PER_PAGE). Soft-deleted items are left out."""
    return await service.user_items_page(
        session=session,
        viewer=viewer,
        user_id=user_id,
        page=page,
        per_page=min(per_page, settings.user_items_max_per_page),
    )
