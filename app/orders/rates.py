"""Yen per unit of a currency: from a provider over the shared outbound HTTP client (cached for
EXCHANGE_RATES_CACHE_SECONDS), or from the static table in settings when none is configured.

Two cache levels: this process's memory first, then the app's cache (app.core.cache), which
with REDIS_URL is the shared Redis, so one fetch serves every process until it expires (the
embedded app has only the first level). A shared entry carries its expiry, and its copy here
expires with it: no process uses a rate longer than the TTL after it was fetched. The keys
are one per currency (a fixed set), so the non-evicting shared Redis holds a bounded handful.
A cache that fails is skipped, never an order's failure: the provider is asked instead.

The provider speaks Frankfurter's API: `GET {url}?from=USD&to=JPY` answers
`{"rates": {"JPY": 151.2}}`. A timeout is a 504, anything else that goes wrong upstream a 502
(app.core.http); neither is cached, so the next request asks again."""

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Protocol

import httpx
from fastapi import Depends

from app.core.cache import Cache, stable_key
from app.core.config import Settings
from app.core.dependencies import Services, ServicesDep
from app.core.http import UpstreamUnavailable, fetch
from app.items.models import Currency

UPSTREAM = "the exchange-rate provider"
logger = logging.getLogger(__name__)


class ExchangeRates(Protocol):
    async def to_jpy(self, currencies: Iterable[Currency]) -> dict[Currency, Decimal]:
        """Yen per unit of each currency (JPY itself is 1)."""
        ...


def parse_static(table: str) -> dict[str, Decimal]:
    pairs = (entry.split("=", 1) for entry in table.split(",") if entry)
    return {code: Decimal(rate) for code, rate in pairs}


@dataclass(frozen=True, slots=True)
class StaticRates:
    table: dict[str, Decimal]

    async def to_jpy(self, currencies: Iterable[Currency]) -> dict[Currency, Decimal]:
        found: dict[Currency, Decimal] = {}
        for currency in currencies:
            if currency is Currency.JPY:
                found[currency] = Decimal(1)
            elif currency.value in self.table:
                found[currency] = self.table[currency.value]
            else:
                raise UpstreamUnavailable(f"No rate for {currency} in EXCHANGE_RATES_STATIC")
        return found


@dataclass(slots=True)
class RateCache:
    """Per process: currency -> (monotonic expiry, rate). A lock per currency makes concurrent
    misses for it cost one upstream call, while hits (and other currencies) never wait on a
    slow provider."""

    entries: dict[Currency, tuple[float, Decimal]] = field(default_factory=dict)
    locks: dict[Currency, asyncio.Lock] = field(default_factory=dict)

    def fresh(self, currency: Currency) -> Decimal | None:
        entry = self.entries.get(currency)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def keep(self, currency: Currency, rate: Decimal, seconds: float) -> None:
        self.entries[currency] = (time.monotonic() + seconds, rate)


@dataclass(frozen=True, slots=True)
class ProviderRates:
    client: httpx.AsyncClient
    url: str
    timeout: float
    ttl: float
    cache: RateCache
    shared: Cache

    async def to_jpy(self, currencies: Iterable[Currency]) -> dict[Currency, Decimal]:
        return {currency: await self._rate(currency) for currency in currencies}

    async def _rate(self, currency: Currency) -> Decimal:
        if currency is Currency.JPY:
            return Decimal(1)
        cached = self.cache.fresh(currency)
        if cached is not None:
            return cached
        async with self.cache.locks.setdefault(currency, asyncio.Lock()):
            cached = self.cache.fresh(currency)  # fetched while this request waited
            if cached is not None:
                return cached
            rate = await self._shared_rate(currency)
            if rate is not None:
                return rate
            rate = await self._fetch(currency)
            self.cache.keep(currency, rate, self.ttl)
            await self._share(currency, rate)
            return rate

    def _key(self, currency: Currency) -> str:
        # Per provider URL: a new provider never serves the old one's rates.
        return f"orders:rate:{stable_key(self.url)}:{currency.value}"

    async def _shared_rate(self, currency: Currency) -> Decimal | None:
        """A rate another process (or this one) fetched, kept here until it expires."""
        if self.ttl <= 0:
            return None
        try:
            raw = await self.shared.get(self._key(currency))
            if raw is None:
                return None
            entry = json.loads(raw)
            rate, left = Decimal(entry["rate"]), float(entry["expires"]) - time.time()
        except Exception:  # a broken cache or entry is a miss: the provider answers instead
            logger.warning("shared exchange rate unreadable for %s", currency, exc_info=True)
            return None
        if left <= 0 or not rate.is_finite() or rate <= 0:
            return None
        self.cache.keep(currency, rate, min(left, self.ttl))
        return rate

    async def _share(self, currency: Currency, rate: Decimal) -> None:
        if self.ttl <= 0:
            return
        entry = json.dumps({"rate": str(rate), "expires": time.time() + self.ttl})
        try:
            await self.shared.set(self._key(currency), entry.encode(), self.ttl)
        except Exception:  # the order goes on; other processes fetch for themselves
            logger.warning("could not share the exchange rate for %s", currency, exc_info=True)

    async def _fetch(self, currency: Currency) -> Decimal:
        response = await fetch(
            self.client, "GET", self.url, upstream=UPSTREAM,
            params={"from": currency.value, "to": "JPY"}, timeout=self.timeout,
        )  # fmt: skip
        if response.status_code != 200:
            raise UpstreamUnavailable(f"{UPSTREAM} answered {response.status_code}")
        try:
            rate = Decimal(str(response.json()["rates"]["JPY"]))
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise UpstreamUnavailable(f"{UPSTREAM} sent no rate for {currency}") from exc
        if not rate.is_finite() or rate <= 0:
            raise UpstreamUnavailable(f"{UPSTREAM} sent no rate for {currency}")
        return rate


# One cache per app's services (an app's lifetime), dropped with them.
_caches: weakref.WeakKeyDictionary[Services, RateCache] = weakref.WeakKeyDictionary()


def build_rates(
    settings: Settings, client: httpx.AsyncClient, cache: RateCache, shared: Cache
) -> ExchangeRates:
    if settings.exchange_rates_url is None:
        return StaticRates(parse_static(settings.exchange_rates_static))
    return ProviderRates(
        client=client,
        url=settings.exchange_rates_url,
        timeout=settings.exchange_rates_timeout_seconds,
        ttl=settings.exchange_rates_cache_seconds,
        cache=cache,
        shared=shared,
    )


async def get_exchange_rates(services: ServicesDep) -> ExchangeRates:
    cache = _caches.get(services)
    if cache is None:
        cache = _caches[services] = RateCache()
    return build_rates(services.settings, services.http, cache, services.cache)


ExchangeRatesDep = Annotated[ExchangeRates, Depends(get_exchange_rates)]
