"""The data-access layer every domain shares: a typed generic repository and a unit of work.

A domain declares one `Repository(Model)` (with the columns clients may sort by) and writes only
what is special to it: its filters, its rules. What the repository does for everyone:

- `get(session, id)`: one row by primary key, `None` if missing (soft-deleted rows too,
  unless `include_deleted=True`);
- `select(*where)`: the base statement (soft-deleted rows left out), for a domain to extend;
- `list(session, where=..., order_by="-created_at", limit=, offset=, options=)`;
- `count(session, where=...)`;
- `create(session, **values)`: added and flushed, so it has its id;
- `insert(engine, **values)`: the same row as one INSERT ... RETURNING committed by itself,
  for a request whose whole write is that row (no session, one round trip);
- `update(session, row, values)`: sets the given fields, flushes;
- `soft_delete(session, row)`: stamps `deleted_at` (models with that column only);
- `delete(session, row)`: removes the row for good (what the database cascades goes with it).

Nothing here commits: a request commits once, through `unit_of_work(session)`, which commits
on success, rolls back on any exception, and then runs the callbacks registered with
`after_commit` (a cache bump, a mail dispatch, a notification): never before the data they
announce is visible to other sessions, and never for work that was rolled back. A lone
`insert` commits as it returns; its caller runs the same callbacks with `run_after_commit`.
"""

import builtins
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm.interfaces import ORMOption

from app.core.db import Base, utcnow, write_one
from app.core.pagination import order_clauses

logger = logging.getLogger("app.db")
ModelT = TypeVar("ModelT", bound=Base)
Where = Iterable[ColumnElement[bool]]


class Repository(Generic[ModelT]):
    """Typed CRUD for one model. `order_columns` is the allow-list `list` sorts by (`name` or
    `-name`); the primary key always breaks ties, so pages never overlap."""

    def __init__(
        self,
        model: type[ModelT],
        *,
        order_columns: Mapping[str, InstrumentedAttribute[Any]] | None = None,
    ) -> None:
        self.model = model
        mapper = inspect(model)
        if len(mapper.primary_key) != 1:
            raise TypeError(f"{model.__name__}: a Repository needs a single-column primary key")
        key_name = mapper.get_property_by_column(mapper.primary_key[0]).key
        self.key: InstrumentedAttribute[Any] = getattr(model, key_name)
        self.deleted_at: InstrumentedAttribute[Any] | None = getattr(model, "deleted_at", None)
        self.order_columns = dict(order_columns or {})
        self.table: Any = mapper.local_table
        self._inserts: dict[frozenset[str], Insert] = {}

    @property
    def soft_deletes(self) -> bool:
        return self.deleted_at is not None

    def select(self, *where: ColumnElement[bool], include_deleted: bool = False) -> Select[Any]:
        statement = select(self.model).where(*where)
        if self.deleted_at is not None and not include_deleted:
            statement = statement.where(self.deleted_at.is_(None))
        return statement

    async def get(
        self,
        session: AsyncSession,
        key: Any,
        *,
        include_deleted: bool = False,
        options: Sequence[ORMOption] = (),
    ) -> ModelT | None:
        row = await session.get(self.model, key, options=options)
        if row is None or (
            self.deleted_at is not None
            and not include_deleted
            and getattr(row, self.deleted_at.key) is not None
        ):
            return None
        return row

    def ordered(self, statement: Select[Any], order_by: str | None) -> Select[Any]:
        """`statement` sorted by an allowed column (`-name`: descending), ties by the key."""
        if order_by is None:
            return statement.order_by(self.key)
        if order_by.removeprefix("-") not in self.order_columns:
            raise ValueError(f"{self.model.__name__} can't be ordered by {order_by!r}")
        return statement.order_by(*order_clauses(order_by, self.order_columns, self.key))

    async def list(
        self,
        session: AsyncSession,
        *,
        where: Where = (),
        order_by: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        include_deleted: bool = False,
        options: Sequence[ORMOption] = (),
    ) -> Sequence[ModelT]:
        statement = self.ordered(self.select(*where, include_deleted=include_deleted), order_by)
        if options:
            statement = statement.options(*options)
        if limit is not None:
            statement = statement.limit(limit)
        if offset:
            statement = statement.offset(offset)
        rows: Sequence[ModelT] = (await session.execute(statement)).scalars().all()
        return rows

    async def count(
        self, session: AsyncSession, *, where: Where = (), include_deleted: bool = False
    ) -> int:
        inner = self.select(*where, include_deleted=include_deleted).subquery()
        total: int = (await session.execute(select(func.count()).select_from(inner))).scalar_one()
        return total

    async def create(self, session: AsyncSession, **values: Any) -> ModelT:
        row = self.model(**values)
        session.add(row)
        await session.flush()  # the id (and server defaults) for the caller
        return row

    async def insert(self, engine: AsyncEngine, **values: Any) -> Mapping[str, Any]:
        """`create` as one INSERT ... RETURNING committed by itself (app.core.db.write_one):
        no session, no unit of work, one round trip where they take three. For a request whose
        whole write is this row. It comes back as its column values (for a response schema),
        not as a model instance. Python-side column defaults (the timestamps) are filled in
        here, as the ORM fills them; server-side ones (the key) are the database's."""
        row = dict(values)
        for column in self.table.columns:
            default = column.default
            if column.key in row or default is None:
                continue
            if default.is_callable:
                row[column.key] = default.arg(None)  # SQLAlchemy's wrapper takes a context
            elif default.is_scalar:
                row[column.key] = default.arg
            else:
                raise TypeError(f"{self.model.__name__}.{column.key}: a default insert can't fill")
        statement = self._inserts.get(frozenset(row))
        if statement is None:
            unknown = row.keys() - self.table.columns.keys()
            if unknown:
                raise AttributeError(f"{self.model.__name__} has no columns {sorted(unknown)}")
            statement = insert(self.table).values(
                {name: bindparam(name, type_=self.table.c[name].type) for name in row}
            )
            statement = self._inserts[frozenset(row)] = statement.returning(*self.table.c)
        inserted = await write_one(engine, statement, **row)
        assert inserted is not None  # an INSERT returns its row
        return inserted

    async def update(self, session: AsyncSession, row: ModelT, values: Mapping[str, Any]) -> ModelT:
        for name, value in values.items():
            if not hasattr(self.model, name):
                raise AttributeError(f"{self.model.__name__} has no column {name!r}")
            setattr(row, name, value)
        await session.flush()
        return row

    async def soft_delete(self, session: AsyncSession, row: ModelT) -> bool:
        """Stamps `deleted_at`; False when it already was (nothing changed)."""
        if self.deleted_at is None:
            raise TypeError(f"{self.model.__name__} has no deleted_at: it can't be soft-deleted")
        if getattr(row, self.deleted_at.key) is not None:
            return False
        setattr(row, self.deleted_at.key, utcnow())
        await session.flush()
        return True

    async def delete(self, session: AsyncSession, row: ModelT) -> None:
        """Deletes the row by its key with one DELETE statement, not `session.delete`: the
        database's ON DELETE rules remove what depends on it, and no relationship is loaded
        to cascade in Python (they may be `lazy="raise"`). The row leaves the session."""
        await session.execute(delete(self.model).where(self.key == getattr(row, self.key.key)))


AfterCommit = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class UnitOfWork:
    session: AsyncSession
    _after_commit: builtins.list[AfterCommit] = field(default_factory=builtins.list)

    def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback` once the commit has succeeded (in registration order)."""
        self._after_commit.append(callback)


@asynccontextmanager
async def unit_of_work(session: AsyncSession) -> AsyncIterator[UnitOfWork]:
    """One transaction: committed when the block ends, rolled back if it raises. Callbacks
    registered with `after_commit` run after the commit; one that fails is logged and does not
    undo the commit or stop the others (the data is already saved)."""
    work = UnitOfWork(session)
    try:
        yield work
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    await run_after_commit(*work._after_commit)


async def run_after_commit(*callbacks: AfterCommit) -> None:
    """Run what announces committed work, in order; one that fails is logged and does not
    stop the others (the data is already saved)."""
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            logger.exception("after-commit callback %r failed", callback)
