from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from app.auth.models import User
from app.auth.principal import Principal
from app.auth.schemas import UserPrivate
from app.core.cache import Cache, cached
from app.core.pagination import after_cursor, cursor_page, paginate
from app.core.repository import Repository, UnitOfWork, run_after_commit, unit_of_work
from app.core.schemas import Page
from app.files import service as files_service
from app.items.errors import ItemNotFound, NotItemsOwner
from app.items.models import Currency, Item
from app.items.schemas import ItemCreate, ItemRead, ItemUpdate, UserItemsPage
from app.users.errors import UserNotFound

# Every write bumps this namespace's generation: cached items and pages retire together.
CACHE_NAMESPACE = "items"


def _user_items() -> Any:
    """`User.items`, the backref app.items.models declares (mypy can't see a backref)."""
    return User.items  # type: ignore[attr-defined]


CACHE_TTL_SECONDS = 60.0

ItemOrder = Literal["id", "-id", "created_at", "-created_at", "price", "-price", "title", "-title"]
_ORDER_COLUMNS = {
    "id": Item.id,
    "created_at": Item.created_at,
    "price": Item.price,
    "title": Item.title,
}
items = Repository(Item, order_columns=_ORDER_COLUMNS)


@dataclass(frozen=True, slots=True)
class ItemFilters:
    search: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    owner_id: int | None = None
    currency: Currency | None = None

    def apply(self, statement: Select[Item]) -> Select[Item]:
        """The filters on `statement` (built on `items.select()`: deleted items left out)."""
        if self.search:
            statement = statement.where(
                or_(
                    Item.title.icontains(self.search, autoescape=True),
                    Item.description.icontains(self.search, autoescape=True),
                )
            )
        if self.min_price is not None:
            statement = statement.where(Item.price >= self.min_price)
        if self.max_price is not None:
            statement = statement.where(Item.price <= self.max_price)
        if self.owner_id is not None:
            statement = statement.where(Item.owner_id == self.owner_id)
        if self.currency is not None:
            statement = statement.where(Item.currency == self.currency)
        return statement


async def create(
    *, engine: AsyncEngine, cache: Cache, data: ItemCreate, owner: Principal
) -> Mapping[str, Any]:
    """The new item's columns. Its one row is the request's whole write: a lone INSERT, committed
    as it returns (no session), then the cache retired."""
    row = await items.insert(engine, **data.model_dump(), owner_id=owner.id)
    await run_after_commit(lambda: cache.bump(CACHE_NAMESPACE))
    return row


def _retire_cache(work: UnitOfWork, cache: Cache) -> None:
    # After the commit, so no reader caches the old state.
    work.after_commit(lambda: cache.bump(CACHE_NAMESPACE))


# Cached reads take the sessionmaker, not a session: a cache hit opens no database session.
@cached(CACHE_NAMESPACE, ttl=CACHE_TTL_SECONDS, ignore=("sessionmaker",))
async def public_item_json(
    *, cache: Cache, sessionmaker: async_sessionmaker[AsyncSession], item_id: int
) -> bytes:
    """The item as the public sees it, serialized; a miss (or 404) reads the database."""
    async with sessionmaker() as session:
        item = await get_visible(session=session, item_id=item_id, viewer=None)
        return ItemRead.model_validate(item).model_dump_json().encode()


async def public_page_json(
    *,
    cache: Cache,
    sessionmaker: async_sessionmaker[AsyncSession],
    filters: ItemFilters,
    page: int,
    per_page: int,
    order_by: ItemOrder,
    max_cached_page: int,
) -> bytes:
    """A page of the public listing, serialized; cached only where the key space is small.

    Free-text searches and deep pages are read from the database every time: each distinct
    search would be an entry nobody else asks for, and a cache of unbounded client text only
    pushes out the pages everyone reads (the first few, by the common filters)."""
    read = _page_json if filters.search or page > max_cached_page else _cached_page_json
    return await read(
        cache=cache,
        sessionmaker=sessionmaker,
        filters=filters,
        page=page,
        per_page=per_page,
        order_by=order_by,
    )


async def _page_json(
    *,
    cache: Cache,
    sessionmaker: async_sessionmaker[AsyncSession],
    filters: ItemFilters,
    page: int,
    per_page: int,
    order_by: ItemOrder,
) -> bytes:
    async with sessionmaker() as session:
        items, total = await list_page(
            session=session, filters=filters, page=page, per_page=per_page, order_by=order_by
        )
    listing = Page[ItemRead].build(
        [ItemRead.model_validate(i) for i in items], total=total, page=page, per_page=per_page
    )
    return listing.model_dump_json().encode()


_cached_page_json = cached(CACHE_NAMESPACE, ttl=CACHE_TTL_SECONDS, ignore=("sessionmaker",))(
    _page_json
)


async def get_visible(*, session: AsyncSession, item_id: int, viewer: Principal | None) -> Item:
    """The item, unless it is soft-deleted and the viewer is not an admin."""
    is_admin = viewer is not None and viewer.is_admin
    item = await items.get(session, item_id, include_deleted=is_admin)
    if item is None:
        raise ItemNotFound(item_id)
    return item


async def list_page(
    *, session: AsyncSession, filters: ItemFilters, page: int, per_page: int, order_by: ItemOrder
) -> tuple[Sequence[Item], int]:
    statement = items.ordered(filters.apply(items.select()), order_by)
    return await paginate(session, statement, page=page, per_page=per_page)


async def list_after_cursor(
    *, session: AsyncSession, filters: ItemFilters, limit: int, cursor: str | None
) -> tuple[Sequence[Item], str | None]:
    """Newest first, keyset on the primary key: page N costs the same as page 1."""
    statement = after_cursor(filters.apply(items.select()), Item.id, cursor=cursor, limit=limit)
    rows = (await session.execute(statement)).scalars().all()
    return cursor_page(rows, limit=limit, key=lambda item: item.id)


async def update(*, session: AsyncSession, cache: Cache, item: Item, data: ItemUpdate) -> Item:
    async with unit_of_work(session) as work:
        await items.update(session, item, data.model_dump(exclude_unset=True))
        _retire_cache(work, cache)
    return item


async def soft_delete(*, session: AsyncSession, cache: Cache, item: Item) -> None:
    async with unit_of_work(session) as work:
        if await items.soft_delete(session, item):
            await files_service.unlink_item_files(session=session, item_id=item.id)
            _retire_cache(work, cache)


async def hard_delete(*, session: AsyncSession, cache: Cache, item: Item) -> None:
    async with unit_of_work(session) as work:
        await items.delete(session, item)
        _retire_cache(work, cache)


async def user_items_page(
    *, session: AsyncSession, viewer: Principal, user_id: int, page: int, per_page: int
) -> UserItemsPage:
    """A user with one page of their live items, for the user or an admin; 404 before 403,
    as GET /users/{id} (which any signed-in user may read) already tells who exists.

    Three statements whatever the page size: the user and its page of items in one eager
    load (selectinload over `User.items`, narrowed to the page by an id IN a LIMIT subquery:
    the relationship is never loaded whole), and the count."""
    if viewer.id != user_id and not viewer.is_admin:
        if await session.get(User, user_id) is None:
            raise UserNotFound(user_id)
        raise NotItemsOwner()
    live = (Item.owner_id == user_id) & Item.deleted_at.is_(None)
    page_ids = (
        select(Item.id).where(live).order_by(Item.id).offset((page - 1) * per_page).limit(per_page)
    )
    user: Any = (
        await session.execute(
            select(User)
            .where(User.id == user_id)
            .options(selectinload(_user_items().and_(Item.id.in_(page_ids))))
            # The user may be in this session already (the principal's checks): load afresh.
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if user is None:
        raise UserNotFound(user_id)
    total = await session.scalar(select(func.count()).select_from(Item).where(live)) or 0
    built = Page[ItemRead].build(
        [ItemRead.model_validate(item) for item in user.items],
        total=total,
        page=page,
        per_page=per_page,
    )
    return UserItemsPage(**dict(built), user=UserPrivate.model_validate(user))
