"""Async engine and sessionmaker, the declarative base (`SessionDep`: app.core.dependencies)."""

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, Select, event, exc
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

from app.core.config import Settings
from app.core.errors import database_unavailable
from app.core.pool import FairAsyncPool

# Stable constraint names, so Alembic autogenerate and batch mode on SQLite can find them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit keys on PostgreSQL; SQLite only auto-increments a column typed exactly INTEGER.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1
# The bound for ids inside JSON bodies: FastAPI writes a body field's bounds into OpenAPI as
# floats, and 2**63 - 1 becomes 2**63 there, so the document would allow an id the validation
# refuses. Every integer up to 2**53 is exact as a float, and no sequence gets near it.
MAX_JSON_ID = 2**53


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        settings.app_data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            poolclass=FairAsyncPool,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout=settings.database_pool_timeout_seconds,
            echo=settings.sql_echo,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    idle = settings.database_ping_idle_seconds
    engine = create_async_engine(
        url,
        poolclass=FairAsyncPool,  # first come first served (app/core/pool.py)
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_recycle=settings.database_pool_recycle_seconds,
        echo=settings.sql_echo,
    )
    _check_at_checkout(engine, idle)
    return engine


# In a pooled connection's info: when (time.monotonic()) it is to be pinged before use.
_PING_AFTER = "ping_after"


def _check_at_checkout(engine: AsyncEngine, idle_seconds: float) -> None:
    """Replace a dead connection at checkout, before a request's statement meets it.

    Two checks. First, free: asyncpg marks a connection closed as soon as the event loop sees
    its socket close, which is what a database restart or `pg_terminate_backend` does to every
    idle connection; such a connection is never handed out. Second, only for connections that
    sat in the pool longer than `idle_seconds`, a ping. SQLAlchemy's pool_pre_ping pings at
    every checkout, and on asyncpg a ping is three round trips (BEGIN, `;`, ROLLBACK): under
    load that doubled the round trips of a one-query request. A connection back in the pool a
    moment ago was alive then; one idle for a while (across a failover, or a proxy's idle
    timeout that drops it silently) is pinged before use and replaced if dead. A connection
    that dies while in use fails that statement, and the pool then retires every connection
    older than the failure (SQLAlchemy's disconnect handling).
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _checked_in(_dbapi: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info[_PING_AFTER] = time.monotonic() + idle_seconds

    @event.listens_for(sync_engine, "checkout")
    def _checked_out(
        dbapi: DBAPIConnection, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        if _closed_by_database(record):
            # DisconnectionError: the pool discards this one and checks out again.
            raise exc.DisconnectionError("the database closed this pooled connection")
        # None: opened for this checkout. Outside a greenlet: a checkout without I/O, which
        # `_ready` let through only before the deadline (a moment ago).
        deadline = record.info.get(_PING_AFTER)
        if deadline is None or time.monotonic() < deadline or not in_greenlet():
            return
        _ping(sync_engine.dialect, dbapi)


def _closed_by_database(record: ConnectionPoolEntry) -> bool:
    driver = record.driver_connection
    return driver is not None and bool(driver.is_closed())


def _ping(dialect: Dialect, dbapi: DBAPIConnection) -> None:
    """A pooled connection's ping; DisconnectionError if it failed: the pool replaces it."""
    try:
        dialect.do_ping(dbapi)
    except Exception as error:
        raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside a writer; foreign keys are off in SQLite unless asked for.
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        "synchronous=NORMAL",
        "busy_timeout=30000",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


async def read_one(
    engine: AsyncEngine, statement: Select[Any], **params: object
) -> Mapping[str, Any] | None:
    """The one row (or none) of a lone SELECT by key, outside any transaction: for the hottest
    reads, such as /users/me.

    On asyncpg the statement is compiled once and run on the driver connection checked out of
    SQLAlchemy's pool (its checkout events, idle pings and limits still apply). SQLAlchemy's
    execution path around it (execution context, cursor adapter, result objects, and the
    switch to AUTOCOMMIT and back that a lone SELECT needs there) cost more than the query:
    ~100 of ~200 µs a read in process (bench/RESULTS.md). Parameters go through their types'
    conversion as SQLAlchemy would send them; values come back as the driver returns them (an
    enum column as its text), for a response schema to validate. A driver error becomes
    SQLAlchemy's DBAPIError (IntegrityError for a constraint), as from any other query, and a
    lost connection is invalidated, so the error handlers and the pool treat it as they would.

    On SQLite, the ordinary Core execution: its driver begins no transaction for a SELECT.
    """
    return await _lone_statement(engine, statement, params, write=False)


async def write_one(
    engine: AsyncEngine, statement: UpdateBase, **params: object
) -> Mapping[str, Any] | None:
    """The RETURNING row (or none) of a lone INSERT, UPDATE or DELETE, committed by itself:
    one statement is its own transaction, so it takes one round trip where a session's unit
    of work takes three (BEGIN, the statement, COMMIT) and the ORM's flush machinery around
    them (bench/RESULTS.md). For a request whose whole write is this one statement; writes
    that must stand or fall together go through `unit_of_work`. The same driver path and
    errors as `read_one`; on SQLite, Core in a transaction of its own."""
    return await _lone_statement(engine, statement, params, write=True)


async def _lone_statement(
    engine: AsyncEngine,
    statement: Select[Any] | UpdateBase,
    params: Mapping[str, object],
    *,
    write: bool,
) -> Mapping[str, Any] | None:
    if engine.dialect.driver != "asyncpg":
        async with engine.begin() if write else engine.connect() as pooled:
            result = await pooled.execute(statement, params)
            row = result.mappings().one_or_none()
            return None if row is None else dict(row)
    sql, names, processors = _positional(statement, engine.dialect)
    try:
        args = [
            params[name] if convert is None else convert(params[name])
            for name, convert in zip(names, processors, strict=True)
        ]
    except Exception as error:  # a type refused its value: what Core raises for it
        raise exc.StatementError(str(error), sql, params, error) from error
    # One turn of the event loop before the statement: the requests that arrived together
    # then send their statements together, and their answers come back together. Without it
    # (once the checkout below stopped yielding) CPU per request rose and p99 doubled; the
    # floor app measured the same (bench/RESULTS.md, stops 23 and 24).
    await asyncio.sleep(0)
    raw = await _checkout(engine)
    try:
        driver = raw.driver_connection
        assert driver is not None  # a checked-out connection is open
        try:
            # Outside a transaction block: PostgreSQL commits a lone write as it ends.
            record = await driver.fetchrow(sql, *args)
        except Exception as error:
            lost = driver.is_closed() or database_unavailable(error)
            if lost:
                # What SQLAlchemy does on any disconnect it sees: the pool retires every
                # connection as old as this one at its next checkout, not this one alone. A
                # database restart killed them all, and each would fail a request of its own.
                engine.sync_engine.pool._invalidate(raw, error, _checkin=False)
                raw.invalidate(error)
            raise _driver_error(sql, params, error, lost) from error
    finally:
        raw.close()  # no transaction was begun: the reset on return sends nothing
    return None if record is None else dict(record.items())


async def _checkout(engine: AsyncEngine) -> PoolProxiedConnection:
    """A pooled connection for a lone statement, checked out without a greenlet when that
    needs no I/O.

    `AsyncEngine.connect()` runs the pool's checkout, and `close()` its checkin, each in a new
    greenlet in case it does I/O: ~20% of /users/me's CPU (bench/RESULTS.md), for a checkout
    that under load almost always takes an idle, live connection from the queue. So when the
    next one is such a connection (`_ready`), the checkout runs plainly; anything else (a
    connection to open, wait for, ping, recycle or replace) goes through the greenlet, as
    before. Should a plain checkout need I/O after all, SQLAlchemy raises MissingGreenlet
    before any starts, and the greenlet takes over."""
    pool = engine.sync_engine.pool
    if isinstance(pool, FairAsyncPool) and _ready(pool, pool.next_idle()):
        try:
            return pool.connect()
        except exc.MissingGreenlet:
            pass
    try:
        return await greenlet_spawn(pool.connect)
    except engine.dialect.loaded_dbapi.Error as error:
        # What `engine.connect()` raises for a connection it can't open (a DBAPIError, which
        # the error handlers answer with a 503 while the database restarts), not the driver
        # adapter's own exception.
        dialect = engine.sync_engine.dialect
        raise exc.DBAPIError.instance(
            None, None, error, dialect.loaded_dbapi.Error, dialect=dialect,
            connection_invalidated=dialect.is_disconnect(error, None, None),
        ) from error  # fmt: skip


def _ready(pool: FairAsyncPool, record: ConnectionPoolEntry | None) -> bool:
    """Whether a checkout of this idle connection does no I/O: it is open, not closed by the
    database, not due for a ping (`_check_at_checkout`), for recycling, or retired (the
    conditions of SQLAlchemy's `_ConnectionRecord.get_connection`)."""
    if not isinstance(record, _ConnectionRecord) or record._is_hard_or_soft_invalidated():
        return False
    if _closed_by_database(record) or time.monotonic() >= record.info.get(_PING_AFTER, 0):
        return False
    return pool._recycle < 0 or time.time() - record.starttime <= pool._recycle


def _driver_error(
    sql: str, params: Mapping[str, object], error: Exception, lost: bool
) -> exc.DBAPIError:
    """The error SQLAlchemy's asyncpg dialect would raise for the same failure."""
    import asyncpg  # type: ignore[import-untyped]  # loaded already: this is its path

    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return exc.IntegrityError(sql, params, error, connection_invalidated=lost)
    wrapped = exc.DBAPIError.instance(sql, params, error, Exception, connection_invalidated=lost)
    assert isinstance(wrapped, exc.DBAPIError)  # not a StatementError: it wraps a driver's
    return wrapped


Converter = Callable[[Any], Any] | None


@functools.lru_cache(maxsize=64)
def _positional(
    statement: Select[Any] | UpdateBase, dialect: Dialect
) -> tuple[str, tuple[str, ...], tuple[Converter, ...]]:
    """The statement's SQL for the dialect, its parameters' names in positional order and each
    one's conversion by its type (None: sent as given)."""
    compiled = statement.compile(dialect=dialect)
    if compiled.positiontup is None or compiled.literal_execute_params:
        raise ValueError("a lone statement takes plain positional parameters")
    names = tuple(compiled.positiontup)
    converters = tuple(compiled.binds[name].type.bind_processor(dialect) for name in names)
    return compiled.string, names, converters


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def str_enum(enum_class: type[StrEnum]) -> SAEnum:
    """A Python enum stored as its string value in a VARCHAR: portable, no native enum type."""
    return SAEnum(
        enum_class,
        native_enum=False,
        length=max(len(member.value) for member in enum_class),
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )
