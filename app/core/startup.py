"""At start, wait a bounded time for the database and Redis this process is configured with.

A stack started all at once brings the API up before PostgreSQL accepts connections; a typo in
a URL never gets better. Either way the process must neither hang nor die with a traceback:
it retries with backoff for STARTUP_TIMEOUT_SECONDS, then names what it could not reach (the
password hidden) in one line. Embedded mode (SQLite, no Redis) has nothing to wait for.
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from app.core.config import Settings
from app.core.db import create_engine

ATTEMPT_TIMEOUT_SECONDS = 5.0  # one connection attempt; a silent host must not eat the budget
BACKOFF_START_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 2.0
_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return _USERINFO.sub("***@", url)


class Unreachable(Exception):
    def __init__(self, what: str, url: str, reason: str) -> None:
        self.what, self.url, self.reason = what, url, reason
        super().__init__(f"cannot reach {what} at {redact(url)}: {reason}")


@dataclass(frozen=True, slots=True)
class Dependency:
    what: str
    url: str
    check: Callable[[], Awaitable[None]]


def dependencies(settings: Settings) -> list[Dependency]:
    found: list[Dependency] = []
    if settings.database_url:

        async def database() -> None:
            engine = create_engine(settings)
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            finally:
                await engine.dispose()

        found.append(Dependency("the database", settings.database_url, database))
    redis_urls = {"Redis": settings.redis_url, "the job broker": settings.celery_broker_url}
    seen: set[str] = set()
    for what, url in redis_urls.items():
        if url and url.startswith(("redis://", "rediss://")) and url not in seen:
            seen.add(url)
            found.append(Dependency(what, url, _redis_check(url)))
    return found


def _redis_check(url: str) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        client = Redis.from_url(url, socket_connect_timeout=ATTEMPT_TIMEOUT_SECONDS)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return check


def _reason(exc: BaseException, url: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {ATTEMPT_TIMEOUT_SECONDS:.0f}s"
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = " ".join(str(cause).split()) or type(cause).__name__
    password = _password(url)
    return reason.replace(password, "***") if password else reason


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except ArgumentError:
        return None


async def wait_for(dependency: Dependency, deadline: float) -> None:
    delay = BACKOFF_START_SECONDS
    while True:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.1, min(remaining, ATTEMPT_TIMEOUT_SECONDS))):
                await dependency.check()
        except Exception as exc:  # any failure is retried: a server starting up says odd things
            if time.monotonic() + delay >= deadline:
                reason = _reason(exc, dependency.url)
                raise Unreachable(dependency.what, dependency.url, reason) from None
        else:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_SECONDS)


async def wait_for_dependencies(settings: Settings) -> None:
    """Raises Unreachable for the first dependency still down after the timeout."""
    deadline = time.monotonic() + settings.startup_timeout_seconds
    for dependency in dependencies(settings):
        await wait_for(dependency, deadline)
