"""The Redis client: one per process, opened in the lifespan; absent in embedded mode."""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.config import Settings
from app.core.redis_pipe import PipelinedRedis

# Short timeouts: a request waiting on a sick Redis is worse than one that falls back.
SOCKET_TIMEOUT_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 0.5

__all__ = ["Redis", "RedisError", "create_cache_redis", "create_pipelined", "create_redis"]


def create_redis(settings: Settings) -> Redis | None:
    return _client(settings.redis_url, settings)


def create_cache_redis(settings: Settings) -> Redis | None:
    """The dedicated instance for cached responses (CACHE_REDIS_URL), if there is one."""
    return _client(settings.cache_redis_url, settings)


def create_pipelined(url: str | None) -> PipelinedRedis | None:
    """The pipelined client (app/core/redis_pipe.py) for the per-request commands, if `url`
    is set and plain TCP; None leaves those commands on redis-py."""
    if not url:
        return None
    return PipelinedRedis.from_url(
        url, timeout=SOCKET_TIMEOUT_SECONDS, connect_timeout=CONNECT_TIMEOUT_SECONDS
    )


def _client(url: str | None, settings: Settings) -> Redis | None:
    if not url:
        return None
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        max_connections=settings.redis_max_connections,
    )
