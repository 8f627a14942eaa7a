"""Rate limits: counters in process memory (one process, embedded mode), or in Redis for all
processes.

Windows are fixed and aligned to the clock (`window = now // period`), so the count, the
remaining budget and the reset time all come from one atomic INCR-with-expiry: one storage
round trip per check, and every process agrees on the window.
"""

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.metrics import RATE_LIMIT_BACKEND_ERRORS, RATE_LIMIT_REJECTIONS
from app.core.redis import CONNECT_TIMEOUT_SECONDS, SOCKET_TIMEOUT_SECONDS
from app.core.redis_pipe import PipelinedRedis

logger = logging.getLogger("app.ratelimit")


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    limit: RateLimitItem
    # Security limits (login, reset) refuse service when the counter is unreachable; the
    # general limit lets traffic through rather than take the API down with Redis.
    fail_closed: bool = False

    @classmethod
    def parse(cls, name: str, text: str, *, fail_closed: bool = False) -> "Policy":
        return cls(name, parse(text), fail_closed)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    key: str = ""  # the window's counter, for a refund

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_after)))
        return headers


# Identifiers can be client text (a reset request's email is counted before it is validated):
# longer ones are stored as a digest, so a counter key never costs more than ~150 bytes.
_MAX_IDENTIFIER_CHARS = 64


def _bounded(identifier: str) -> str:
    if len(identifier) <= _MAX_IDENTIFIER_CHARS:
        return identifier
    return "sha256:" + hashlib.sha256(identifier.encode(errors="surrogatepass")).hexdigest()


def _key(policy: Policy, identifiers: tuple[str, ...], window: int) -> str:
    return policy.limit.key_for(policy.name, *map(_bounded, identifiers), str(window))


class LimiterUnavailable(Exception):
    """The counter store can't be reached and the policy fails closed."""


class Counters(Protocol):
    """Where the windows' counts live: `MemoryCounters`, `RedisCounters`, or `limits`' Redis
    storage for URLs the pipelined client doesn't take."""

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...
    async def clear(self, key: str) -> None: ...


# The limits library's script for the same counters, so keys and values are what its
# RedisStorage wrote (deployments and tools that read them keep working).
_INCR_EXPIRE = """
local current = redis.call("incrby", KEYS[1], tonumber(ARGV[2]))
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return current
"""
_KEY_PREFIX = "ratelimit"


class RedisCounters:
    """The counters in Redis through the pipelined client (app/core/redis_pipe.py): the one
    Redis command that every request makes, at a fraction of redis-py's cost per command. The
    client belongs to whoever made it (the lifespan), as the redis-py client does."""

    def __init__(self, redis: PipelinedRedis) -> None:
        self.redis = redis
        self._incr = redis.register_script(_INCR_EXPIRE)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return int(await self._incr(keys=[f"{_KEY_PREFIX}:{key}"], args=[expiry, amount]))

    async def clear(self, key: str) -> None:
        await self.redis.execute("DEL", f"{_KEY_PREFIX}:{key}")


# How often expired windows are dropped from process memory (by the request that comes due).
_SWEEP_SECONDS = 1.0


class MemoryCounters:
    """The counters in process memory: a count and an end per window key, expired ones dropped
    once a second. The `limits` library's memory storage did the same with a lock per key and
    a new asyncio task per count (to expire keys), ~8 µs a request against ~1 here."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # key -> [count, ends at]
        self._next_sweep = clock() + _SWEEP_SECONDS

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._windows.get(key)
        if window is None or window[1] <= now:
            window = self._windows[key] = [0, now + expiry]
        window[0] += amount
        return int(window[0])

    async def clear(self, key: str) -> None:
        self._windows.pop(key, None)

    def __len__(self) -> int:
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
        self._next_sweep = now + _SWEEP_SECONDS


class RateLimiter:
    def __init__(self, storage: Counters) -> None:
        self.storage = storage

    async def hit(self, policy: Policy, *identifiers: str) -> Decision | None:
        """Count one request; None when the store is down and the policy fails open."""
        period = policy.limit.get_expiry()
        now = time.time()
        window = int(now // period)
        key = _key(policy, identifiers, window)
        try:
            count = await self.storage.incr(key, period)
        except (StorageError, RedisError, OSError) as exc:
            RATE_LIMIT_BACKEND_ERRORS.labels(policy=policy.name).inc()
            logger.warning("rate limit store unavailable for %s: %s", policy.name, exc)
            if policy.fail_closed:
                raise LimiterUnavailable(policy.name) from exc
            return None
        amount = policy.limit.amount
        decision = Decision(
            allowed=count <= amount,
            limit=amount,
            remaining=max(0, amount - count),
            reset_after=(window + 1) * period - now,
            key=key,
        )
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.labels(policy=policy.name).inc()
        return decision

    async def refund(self, policy: Policy, decision: Decision) -> None:
        """Give back the hit that made `decision`: a limit on failures counts every attempt
        up front (concurrent attempts can't all slip under it) and refunds the successes.

        The refund goes to the window the hit was counted in: once that window is over, its
        key is never read again, so a refund that comes too late changes nothing."""
        try:
            await self.storage.incr(decision.key, policy.limit.get_expiry(), amount=-1)
        except (StorageError, RedisError, OSError) as exc:
            # The hit stays counted: the limit errs on the strict side.
            RATE_LIMIT_BACKEND_ERRORS.labels(policy=policy.name).inc()
            logger.warning("rate limit refund failed for %s: %s", policy.name, exc)

    async def clear(self, policy: Policy, *identifiers: str) -> None:
        """Start the current window's count for these identifiers again (older windows have
        expired or will never be read)."""
        period = policy.limit.get_expiry()
        window = int(time.time() // period)
        key = _key(policy, identifiers, window)
        try:
            await self.storage.clear(key)
        except (StorageError, RedisError, OSError) as exc:
            RATE_LIMIT_BACKEND_ERRORS.labels(policy=policy.name).inc()
            logger.warning("rate limit clear failed for %s: %s", policy.name, exc)

    async def close(self) -> None:
        """Nothing to release: a Redis client belongs to whoever made it."""


def create_limiter(settings: Settings, pipelined: PipelinedRedis | None) -> RateLimiter:
    """`pipelined`: the process's pipelined client of REDIS_URL (`create_pipelined`), if the
    URL allows one; the limiter uses it and leaves closing it to its owner."""
    if not settings.redis_url:
        return RateLimiter(MemoryCounters())
    if pipelined is not None:
        return RateLimiter(RedisCounters(pipelined))
    # A URL the pipelined client doesn't take (TLS, a unix socket): the library's storage.
    storage = RedisStorage(
        "async+" + settings.redis_url,
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=_KEY_PREFIX,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    return RateLimiter(storage)


@dataclass(frozen=True, slots=True)
class Policies:
    default: Policy
    login: Policy
    login_account: Policy
    login_account_global: Policy
    register: Policy
    password_reset: Policy
    test_email: Policy
    email_send: Policy
    email_send_admin: Policy
    chat_message: Policy
    realtime_connect_user: Policy
    realtime_connect_client: Policy
    chat_presence: Policy

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policies":
        return cls(
            default=Policy.parse("default", settings.rate_limit_default),
            login=Policy.parse("login", settings.rate_limit_login, fail_closed=True),
            login_account=Policy.parse(
                "login_account", settings.rate_limit_login_account, fail_closed=True
            ),
            login_account_global=Policy.parse(
                "login_account_global", settings.rate_limit_login_account_global, fail_closed=True
            ),
            register=Policy.parse("register", settings.rate_limit_register, fail_closed=True),
            password_reset=Policy.parse(
                "password_reset", settings.rate_limit_password_reset, fail_closed=True
            ),
            test_email=Policy.parse("test_email", settings.rate_limit_test_email, fail_closed=True),
            email_send=Policy.parse("email_send", settings.rate_limit_email_send, fail_closed=True),
            email_send_admin=Policy.parse(
                "email_send_admin", settings.rate_limit_email_send_admin, fail_closed=True
            ),
            chat_message=Policy.parse("chat_message", settings.rate_limit_chat_message),
            realtime_connect_user=Policy.parse(
                "realtime_connect_user", settings.rate_limit_realtime_connect_user
            ),
            realtime_connect_client=Policy.parse(
                "realtime_connect_client", settings.rate_limit_realtime_connect_client
            ),
            chat_presence=Policy.parse("chat_presence", settings.rate_limit_chat_presence),
        )
