"""The API process's core services, in one typed container, and their FastAPI dependencies.

The lifespan (app/main.py) builds one `Services` and stores it as `app.state.services`; that
attribute is read here and nowhere else in the app (`services_of`, `services_in`). Routes take
the typed aliases below (`SessionDep`, `SettingsDep`, `CacheDep`, ...) or, when a route needs
several services (or one without an alias: engine, sessionmaker, redis), `ServicesDep` once.
Each provider reads one attribute of the container and depends on nothing else, so a route pays
one dependency per alias (FastAPI solves each at most once per request). That is still about 8 µs
a request in process (FastAPI 0.163 rebuilds each dependency's call on every request), so the
hottest routes (users/me and the items' read, list and create) take the `Request` instead and
call `services_of` themselves; everywhere else the aliases read better and cost nothing that
shows.

Services of packages above core (the Celery `Jobs`, the `Realtime` runtime) can't be named here
(core imports no app package); their providers sit beside them in app/jobs/dependencies.py and
app/realtime/dependencies.py. The one exception is the user notifier, which domains below
realtime need: they name the `Notifier` protocol (app.core.notifier), the lifespan stores
realtime's service as `app.state.notifier`, and `NotifierDep` reads it.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection
from starlette.types import Scope

from app.core.background import TaskManager
from app.core.cache import Cache
from app.core.config import Settings
from app.core.notifier import Notifier
from app.core.pubsub import Hub
from app.core.ratelimit import Policies, RateLimiter
from app.core.redis import Redis
from app.core.security import AccessTokenVerifier, PasswordHasher
from app.core.storage import Storage
from app.core.streams import StreamLimiter


# eq=False: one container is one process's services, compared and hashed by identity (the
# readiness memo keys on it).
@dataclass(frozen=True, slots=True, kw_only=True, eq=False, weakref_slot=True)
class Services:
    """What one API process opens at start and shares across requests; closed by the lifespan."""

    settings: Settings
    policies: Policies
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    token_verifier: AccessTokenVerifier
    redis: Redis | None
    cache: Cache
    limiter: RateLimiter
    hub: Hub
    storage: Storage
    background: TaskManager
    streams: StreamLimiter
    # The shared outbound client (app.core.http): one connection pool per process; callers
    # pass their own per-request timeout and go through app.core.http.fetch (502/504).
    http: httpx.AsyncClient


def services_of(connection: HTTPConnection) -> Services:
    """The container of the app serving this request or WebSocket (set by the lifespan).

    A plain function, not a dependency: code on the hot path (the principal, rate limits) reads
    several services through one call instead of solving one dependency per service."""
    services: Services = connection.scope["app"].state.services
    return services


def services_in(scope: Scope) -> Services:
    """`services_of` from an ASGI scope: for middleware, which has no Request."""
    services: Services = scope["app"].state.services
    return services


# Providers take an HTTPConnection, so one alias serves HTTP routes and WebSockets alike. They
# are `async def`: FastAPI would run a plain `def` dependency in its thread pool.


async def get_services(connection: HTTPConnection) -> Services:
    return services_of(connection)


async def get_app_settings(connection: HTTPConnection) -> Settings:
    return services_of(connection).settings


async def get_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """One session per request; anything not committed is rolled back, never half-written."""
    async with services_of(connection).sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise


async def get_short_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """`get_session` for routes that stream a body, closed when the route returns (scope
    "function" below): a request-scoped session lives until the last byte is sent, and its
    connection with it, so stalled readers could hold the whole pool."""
    async with services_of(connection).sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise


async def get_hasher(connection: HTTPConnection) -> PasswordHasher:
    return services_of(connection).hasher


async def get_cache(connection: HTTPConnection) -> Cache:
    return services_of(connection).cache


async def get_hub(connection: HTTPConnection) -> Hub:
    return services_of(connection).hub


async def get_storage(connection: HTTPConnection) -> Storage:
    return services_of(connection).storage


async def get_http_client(connection: HTTPConnection) -> httpx.AsyncClient:
    return services_of(connection).http


async def get_background(connection: HTTPConnection) -> TaskManager:
    return services_of(connection).background


async def get_notifier(connection: HTTPConnection) -> Notifier:
    """Realtime's NotificationService, as the lifespan handed it in (app.main)."""
    notifier: Notifier = connection.scope["app"].state.notifier
    return notifier


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
ShortSessionDep = Annotated[AsyncSession, Depends(get_short_session, scope="function")]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
CacheDep = Annotated[Cache, Depends(get_cache)]
HubDep = Annotated[Hub, Depends(get_hub)]
StorageDep = Annotated[Storage, Depends(get_storage)]
BackgroundDep = Annotated[TaskManager, Depends(get_background)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
