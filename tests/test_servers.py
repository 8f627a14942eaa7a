"""The throwaway real-server helpers in tests/support/servers.py actually work."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.support.servers import PostgresServer, ServerUnavailable, require_server

pytestmark = pytest.mark.postgres


def _plain(url: str) -> str:
    """asyncpg wants ``postgresql://``; the helpers hand out SQLAlchemy URLs."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(_plain(url), timeout=10)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        require_server(str(exc))
    try:
        yield server
    finally:
        server.stop()


async def test_postgres_accepts_asyncpg_connection(postgres: PostgresServer) -> None:
    url = postgres.url()
    assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{postgres.port}/postgres"
    assert await _select_one(url) == 1


async def test_postgres_create_database(postgres: PostgresServer) -> None:
    url = postgres.create_database("servers_selftest")
    assert url.endswith("/servers_selftest")
    conn = await asyncpg.connect(_plain(url), timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database()") == "servers_selftest"
        assert await conn.fetchval("SHOW fsync") == "off"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


def test_postgres_stop_cleans_up_directory() -> None:
    try:
        with PostgresServer() as server:
            base_dir = server.base_dir
            data_dir = server.data_dir
            port = server.port
            assert base_dir is not None
            assert port is not None
            assert (data_dir / "postmaster.pid").exists()
            if os.geteuid() == 0:
                # PostgreSQL refuses to run as root, so the cluster belongs to postgres.
                assert data_dir.stat().st_uid != 0
    except ServerUnavailable as exc:
        require_server(str(exc))
    assert not Path(base_dir).exists()
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert server.base_dir is None
    server.stop()  # idempotent


def test_create_database_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="invalid database name"):
        PostgresServer().create_database('x"; DROP DATABASE postgres; --')
