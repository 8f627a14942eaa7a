"""Totals in JPY from a configured exchange-rate provider, over the shared HTTP client.

The provider here is a MOCK of a third-party service (Frankfurter's API: `GET ?from=USD&to=JPY`
-> `{"rates": {"JPY": ...}}`): a local HTTP server this test starts on loopback, whose answers
the test chooses (a rate, a 500, garbage, or no answer at all). Everything else is real.
The static table (no provider configured) is covered in test_orders.py. State in memory,
except where sharing the rates across processes through Redis is the point."""

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.core.cache import RedisCache
from app.core.redis import Redis
from app.items.models import Currency
from app.orders.rates import ProviderRates, RateCache
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import BuildClient

MEMORY = pytest.mark.parametrize("shared_state", ["memory"], indirect=True)
ORDERS = "/api/v1/orders/"
RATES = {"USD": "151.25", "EUR": "163.10"}
ADDRESS = {"postal_code": "530-0001", "prefecture": "大阪府", "city": "大阪市", "street": "梅田1-1"}


@dataclass
class Provider:
    url: str
    mode: str = "ok"  # ok | error | garbage | hang
    asked: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            currency = query["from"][0]
            state.asked.append(currency)
            if state.mode == "hang":
                state.release.wait(10)  # until the test is done with it: never a fixed delay
                return
            status, body = 200, json.dumps({"base": currency, "rates": {"JPY": RATES[currency]}})
            if state.mode == "error":
                status, body = 500, "upstream exploded"
            elif state.mode == "garbage":
                body = "<html>not json</html>"
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/latest"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def body(currency: str, price: str = "10.00") -> dict[str, Any]:
    line = {"name": "Tea", "quantity": 2, "unit_price": price, "currency": currency}
    return {"lines": [line], "shipping_address": ADDRESS}


async def order(client: httpx.AsyncClient, who: Account, currency: str) -> httpx.Response:
    return await client.post(ORDERS, json=body(currency), headers=who.headers)


@MEMORY
async def test_provider_rates_are_cached_and_failures_are_502_or_504(
    build_client: BuildClient, provider: Provider
) -> None:
    async with build_client(
        exchange_rates_url=provider.url,
        exchange_rates_timeout_seconds=0.5,
        exchange_rates_cache_seconds=600,
    ) as (app, client):
        owner = await Factory(client, app).account()
        first = await order(client, owner, "USD")
        assert first.status_code == 201, first.text
        assert Decimal(first.json()["total_jpy"]) == Decimal("3025")  # 20 x 151.25
        assert first.json()["rates_jpy"] == {"USD": "151.25"}
        assert (await order(client, owner, "USD")).status_code == 201
        assert provider.asked == ["USD"]  # the second order used the cached rate
        assert (await order(client, owner, "JPY")).status_code == 201  # yen needs no rate
        assert provider.asked == ["USD"]

        provider.mode = "error"
        assert_envelope(await order(client, owner, "EUR"), 502, "bad_gateway")
        provider.mode = "garbage"
        assert_envelope(await order(client, owner, "EUR"), 502, "bad_gateway")
        provider.mode = "hang"
        # A cached currency does not wait behind another's slow fetch.
        timed_out, cached = await asyncio.gather(
            order(client, owner, "EUR"), order(client, owner, "USD")
        )
        assert_envelope(timed_out, 504, "gateway_timeout")
        assert cached.status_code == 201
        assert provider.asked == ["USD", "EUR", "EUR", "EUR"]  # failures are not cached
        # A failed conversion places nothing.
        assert len((await client.get(ORDERS, headers=owner.headers)).json()["items"]) == 4


@MEMORY
async def test_without_a_cache_every_order_asks_the_provider(
    build_client: BuildClient, provider: Provider
) -> None:
    async with build_client(exchange_rates_url=provider.url, exchange_rates_cache_seconds=0) as (
        app,
        client,
    ):
        owner = await Factory(client, app).account()
        for _ in range(2):
            placed = await order(client, owner, "EUR")
            assert Decimal(placed.json()["total_jpy"]) == Decimal("3262")  # 20 x 163.10
        assert provider.asked == ["EUR", "EUR"]


@pytest.mark.parametrize("shared_state", ["redis"], indirect=True)
async def test_a_rate_fetched_by_one_process_serves_the_others_through_redis(
    build_client: BuildClient, provider: Provider
) -> None:
    """Two app instances on one Redis (and one database): the second places its order with
    the rate the first fetched, without asking the provider."""
    settings = {"exchange_rates_url": provider.url, "exchange_rates_cache_seconds": 600}
    async with build_client(**settings) as (first_app, first):
        owner = await Factory(first, first_app).account()
        assert (await order(first, owner, "USD")).status_code == 201
        async with build_client(**settings) as (_, second):
            placed = await order(second, owner, "USD")
            assert placed.status_code == 201, placed.text
            assert placed.json()["rates_jpy"] == {"USD": "151.25"}
            assert provider.asked == ["USD"]


async def test_a_cache_outage_falls_through_to_the_provider(provider: Provider) -> None:
    """A real Redis client to a port nothing listens on: every cache call fails, the rate
    still comes from the provider, each time."""
    with socket.socket() as probe:  # a free loopback port, closed again: connections refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broken = RedisCache(Redis.from_url(f"redis://127.0.0.1:{port}"), owns_client=True)
    async with httpx.AsyncClient() as http:
        rates = ProviderRates(
            client=http, url=provider.url, timeout=2.0, ttl=600, cache=RateCache(), shared=broken
        )
        assert await rates.to_jpy([Currency.EUR]) == {Currency.EUR: Decimal("163.10")}
        again = ProviderRates(
            client=http, url=provider.url, timeout=2.0, ttl=600, cache=RateCache(), shared=broken
        )  # another process: nothing shared, so it asks too
        assert await again.to_jpy([Currency.EUR]) == {Currency.EUR: Decimal("163.10")}
    await broken.close()
    assert provider.asked == ["EUR", "EUR"]
