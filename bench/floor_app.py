"""The same-work floor: the I/O each measured endpoint cannot avoid, and nothing else.

No middleware, no ORM, no dependency tree: per request it verifies the JWT with the service's
own key and claims checks (app.core.security.decode_access_token), makes the Redis round trips
the service makes in Redis mode (REDIS_URL set; one per request, and a create's second, which
retires the cached reads: checked with `redis-cli monitor`; without Redis, one turn of the event
loop where the first would be: see `Floor.round_trip`), one query by key with the raw driver
(asyncpg, or aiosqlite on the bench's SQLite file), and serializes the service's own response
schema. It reads the service's settings from the same environment, so it sees the same database
rows and accepts the same token. `run.py` divides the service's CPU per request by this app's:
`floor_ratio` (the issue's goal: <= 1.3).

    python bench/floor_app.py --host 127.0.0.1 --port 8002

Served with the uvicorn options `app api` uses, like bare_app.py.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/floor_app.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response

from app.auth.schemas import UserPrivate
from app.core.config import Settings
from app.core.redis import create_pipelined
from app.core.schemas import Page
from app.core.security import AccessClaims, decode_access_token
from app.items.schemas import ItemCreate, ItemRead

JSON = "application/json"
ITEM_COLUMNS = (
    "id, title, description, price, currency, owner_id, created_at, updated_at, deleted_at"
)
USER_COLUMNS = (
    "id, username, full_name, bio, created_at, email, age, role, is_active, is_verified, "
    "updated_at, last_login_at"
)
_PLACEHOLDER = re.compile(r"\$\d+")


class Database(Protocol):
    async def one(self, sql: str, *args: Any) -> dict[str, Any] | None: ...
    async def all(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


async def _no_reset_query(connection: Any) -> None:
    return None


class Postgres:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str) -> "Postgres":
        import asyncpg  # type: ignore[import-untyped]

        # asyncpg's pool resets a connection on release with a query of its own (RESET ALL,
        # UNLISTEN *, ...): a second round trip per request that the service does not make.
        # Without it the floor makes exactly the endpoint's one query (a transaction left
        # open would still be rolled back by the pool).
        return cls(
            await asyncpg.create_pool(
                url.replace("+asyncpg", ""), min_size=4, max_size=8, reset=_no_reset_query
            )
        )

    async def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await self.pool.fetch(sql, *args)]

    async def close(self) -> None:
        await self.pool.close()


class Sqlite:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, url: str) -> "Sqlite":
        import aiosqlite

        connection = await aiosqlite.connect(url.split(":///", 1)[1])
        connection.row_factory = aiosqlite.Row
        return cls(connection)

    async def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        async with self.connection.execute(_PLACEHOLDER.sub("?", sql), args) as cursor:
            row = await cursor.fetchone()
        return dict(row) if row is not None else None

    async def all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self.connection.execute(_PLACEHOLDER.sub("?", sql), args) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def close(self) -> None:
        await self.connection.close()


class Floor:
    """What the handlers share: settings, the database and (in Redis mode) a Redis client."""

    def __init__(self, settings: Settings, db: Database, redis: Any) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis

    def claims(self, request: Request) -> AccessClaims:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "Not authenticated")
        return decode_access_token(self.settings, token)

    async def round_trip(self, key: str) -> None:
        """The Redis round trip the service makes per request in Redis mode, on the cheapest
        client there is: the service's own pipelined one (redis-py's pool checkout alone cost
        ~40 µs a command, which would flatter every ratio over this floor).

        Without Redis, one turn of the event loop in its place. Measured side by side, this
        app costs 13-18% less CPU per request with that turn than without, and its p99 fell
        from ~90 to ~16 ms (bench/RESULTS.md, stop 23): without any await before its query,
        requests are served unevenly. The floor is the cheapest way to do the work, so it
        takes the turn."""
        if self.redis is not None:
            await self.redis.execute("GET", key)
        else:
            await asyncio.sleep(0)

    async def retire_cached_reads(self) -> None:
        """A create's second round trip in Redis mode: the items' cache generation."""
        if self.redis is not None:
            await self.redis.execute("INCR", "floor:items:generation")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings()
    url = settings.sqlalchemy_url
    db: Database
    db = await Sqlite.connect(url) if url.startswith("sqlite") else await Postgres.connect(url)
    redis = create_pipelined(settings.redis_url)
    if settings.redis_url and redis is None:
        raise SystemExit("the floor needs a plain redis:// URL (TLS or a socket: redis-py)")
    app.state.floor = Floor(settings, db, redis)
    try:
        yield
    finally:
        await db.close()
        if redis is not None:
            await redis.close()


app = FastAPI(lifespan=lifespan)


def _floor(request: Request) -> Floor:
    floor: Floor = request.app.state.floor
    return floor


def _json(body: str, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type=JSON)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/v1/users/me")
async def users_me(request: Request) -> Response:
    floor = _floor(request)
    claims = floor.claims(request)
    await floor.round_trip(f"floor:session:{claims.session_id}")
    row = await floor.db.one(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", claims.user_id)
    if row is None:
        raise HTTPException(404)
    return _json(UserPrivate.model_validate(row).model_dump_json())


@app.get("/api/v1/items/{item_id}")
async def item(request: Request, item_id: int) -> Response:
    floor = _floor(request)
    if "authorization" in request.headers:
        claims = floor.claims(request)
        await floor.round_trip(f"floor:session:{claims.session_id}")
    else:
        await floor.round_trip(f"floor:item:{item_id}")
    row = await floor.db.one(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE id = $1 AND deleted_at IS NULL", item_id
    )
    if row is None:
        raise HTTPException(404)
    return _json(ItemRead.model_validate(row).model_dump_json())


@app.get("/api/v1/items/")
async def items(request: Request, per_page: int = 20) -> Response:
    floor = _floor(request)
    await floor.round_trip("floor:items:page")
    # One query: the page and the total (a window count), newest first as the service lists.
    rows = await floor.db.all(
        f"SELECT {ITEM_COLUMNS}, count(*) OVER () AS total FROM items "
        "WHERE deleted_at IS NULL ORDER BY created_at DESC, id DESC LIMIT $1",
        per_page,
    )
    total = int(rows[0]["total"]) if rows else 0
    page = Page[ItemRead].build(
        [ItemRead.model_validate(r) for r in rows], total=total, page=1, per_page=per_page
    )
    return _json(page.model_dump_json())


@app.post("/api/v1/items/")
async def create_item(request: Request) -> Response:
    floor = _floor(request)
    claims = floor.claims(request)
    data = ItemCreate.model_validate_json(await request.body())
    await floor.round_trip(f"floor:session:{claims.session_id}")
    now: Any = datetime.now(UTC).replace(tzinfo=None)  # the service stores naive UTC
    price: Any = data.price
    if isinstance(floor.db, Sqlite):  # as SQLAlchemy writes them there: text
        now, price = now.isoformat(" "), str(price)
    row = await floor.db.one(
        "INSERT INTO items (title, description, price, currency, owner_id, created_at, "
        f"updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {ITEM_COLUMNS}",
        data.title, data.description, price, data.currency.value, claims.user_id, now,
    )  # fmt: skip
    if isinstance(floor.db, Sqlite):
        await floor.db.connection.commit()
    # A write retires the cached reads, so a client's next read sees it: in Redis mode the
    # service's second round trip (the items' cache generation), which the floor makes too.
    await floor.retire_cached_reads()
    return _json(ItemRead.model_validate(row).model_dump_json(), 201)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    # The options bare_app.py and `app api` use (app/cli.py `_run_api`).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
