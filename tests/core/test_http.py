"""The shared outbound client against real local upstreams: slow ones end in 504."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.errors import AppError
from app.core.http import UpstreamTimeout, UpstreamUnavailable, create_http_client, fetch
from tests.support.processes import free_port


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """Accepts connections and never answers: the slow upstream."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_slow_upstream_becomes_504(silent_upstream: str) -> None:
    async with create_http_client(httpx.Timeout(0.2)) as client:
        with pytest.raises(UpstreamTimeout) as caught:
            await fetch(client, "GET", silent_upstream, upstream="Geocoder")
    error: AppError = caught.value
    assert error.status == 504
    assert error.message == "Geocoder did not answer in time"


async def test_unreachable_upstream_becomes_502() -> None:
    async with create_http_client(httpx.Timeout(1.0)) as client:
        with pytest.raises(UpstreamUnavailable):
            await fetch(client, "GET", f"http://127.0.0.1:{free_port()}/", upstream="Geocoder")
