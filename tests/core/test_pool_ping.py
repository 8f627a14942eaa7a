"""PostgreSQL connections are pinged before use only after sitting idle (issue 14: a ping at
every checkout was three round trips per request), and an idle connection that died meanwhile
(a failover, a proxy's idle timeout) is replaced before any statement sees it. A connection the
database closed (a restart) is replaced at checkout without a ping. Each holds for both ways a
statement gets its connection: a connection (sessions, Core) and a lone statement (`read_one`,
whose checkout skips the greenlet when it can: app.core.db `_checkout`)."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine, read_one
from tests.support.settings import make_settings
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.postgres
IDLE_SECONDS = 0.2


_PID = text("SELECT pg_backend_pid()")
_LONE_PID = select(func.pg_backend_pid().label("pid"))
BackendPid = Callable[[AsyncEngine], Awaitable[int]]


async def _pid_on_a_connection(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(_PID)).scalar_one())


async def _pid_of_a_lone_statement(engine: AsyncEngine) -> int:
    row = await read_one(engine, _LONE_PID)
    assert row is not None
    return int(row["pid"])


@pytest.fixture(params=["connection", "lone statement"])
def backend_pid(request: pytest.FixtureRequest) -> BackendPid:
    """The backend a statement ran on, by one of the two ways to get a pooled connection."""
    return _pid_on_a_connection if request.param == "connection" else _pid_of_a_lone_statement


class _DroppingProxy:
    """A TCP proxy to PostgreSQL that can drop its connections silently, as a firewall or a
    pooling proxy does on an idle timeout: the database side is gone, the client's socket
    stays open and looks alive until the client next sends, which is then refused (reset).
    Only a ping can find such a connection; the driver sees nothing closed."""

    def __init__(self, target: SplitResult) -> None:
        self.target = target
        self.upstreams: list[asyncio.StreamWriter] = []
        self.dropped = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return self.target._replace(netloc=f"{self.target.username}@127.0.0.1:{port}").geturl()

    def drop(self) -> None:
        self.dropped = True
        for upstream in self.upstreams:
            upstream.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        dropped_before = self.dropped
        upstream_in, upstream = await asyncio.open_connection(
            self.target.hostname, self.target.port
        )
        self.upstreams.append(upstream)

        def was_dropped() -> bool:
            return self.dropped and not dropped_before

        async def to_database() -> None:
            while data := await client_in.read(65536):
                if was_dropped():  # the client's first word after the drop: refused
                    client.transport.abort()
                    return
                upstream.write(data)
            upstream.close()

        async def to_client() -> None:
            while data := await upstream_in.read(65536):
                client.write(data)
            if not was_dropped():  # the database ended it: so does the client's side
                client.close()

        await asyncio.gather(to_database(), to_client(), return_exceptions=True)


async def test_an_idle_connection_dropped_silently_is_pinged_and_replaced(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend_pid: BackendPid
) -> None:
    proxy = _DroppingProxy(urlsplit(postgres_url))
    settings = make_settings(
        tmp_path, await proxy.start(), database_pool_size=1,
        database_ping_idle_seconds=IDLE_SECONDS,
    )  # fmt: skip
    engine = create_engine(settings)
    pings = _count_pings(engine, monkeypatch)
    try:
        first = await backend_pid(engine)
        assert await backend_pid(engine) == first  # not idle: reused without a ping
        assert pings == []
        proxy.drop()
        # Idleness is the condition under test: the connection must sit past its threshold.
        await asyncio.sleep(IDLE_SECONDS * 1.5)
        # Then it is pinged, found dead and replaced, and the statement runs on the new one:
        # no error reaches the caller (one attempt, not a retry loop).
        assert await backend_pid(engine) != first
        assert len(pings) == 1
    finally:
        await engine.dispose()
        await proxy.close()


async def test_a_connection_the_database_closed_is_replaced_at_checkout_without_a_ping(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend_pid: BackendPid
) -> None:
    """A restart closes every pooled connection at once. The driver sees each socket close as
    it happens, and checkout hands none of them out: no request meets one, and no ping is
    spent finding out."""
    size = 3
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=size, database_ping_idle_seconds=3600
    )
    engine, killer = create_engine(settings), create_engine(settings)
    pings = _count_pings(engine, monkeypatch)
    try:
        held = [await engine.connect() for _ in range(size)]
        drivers = [(await c.get_raw_connection()).driver_connection for c in held]
        pids = {(await c.execute(_PID)).scalar_one() for c in held}
        for connection in held:
            await connection.close()
        async with killer.connect() as connection:
            for pid in pids:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await eventually_async(
            lambda: all(d is not None and d.is_closed() for d in drivers) or None,
            timeout=10, what="the driver to see its connections closed",
        )  # fmt: skip
        for _ in range(size):  # each pooled one is replaced as it is checked out
            assert await backend_pid(engine) not in pids
        assert pings == []
    finally:
        await engine.dispose()
        await killer.dispose()


def _count_pings(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[DBAPIConnection]:
    """The pings the engine sends, recorded as they go through to the real `do_ping`."""
    pings: list[DBAPIConnection] = []
    dialect = engine.sync_engine.dialect
    real = dialect.do_ping

    def counted(dbapi_connection: DBAPIConnection) -> bool:
        pings.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


@pytest.mark.parametrize(("idle_seconds", "expected"), [(0, 2), (3600, 0)])
async def test_pings_follow_the_idle_threshold(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    idle_seconds: float, expected: int, backend_pid: BackendPid,
) -> None:  # fmt: skip
    """0 pings at every checkout (but a brand-new connection's); otherwise only after idling."""
    settings = make_settings(
        tmp_path, postgres_url, database_pool_size=1, database_ping_idle_seconds=idle_seconds
    )
    engine = create_engine(settings)
    pings = _count_pings(engine, monkeypatch)
    try:
        for _ in range(3):
            await backend_pid(engine)
        assert len(pings) == expected
    finally:
        await engine.dispose()
