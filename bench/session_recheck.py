"""What the periodic session re-check of live connections costs (WS_SESSION_RECHECK_SECONDS).

Every API process checks each live connection's session once per period, one after another,
as a request's token is checked: one cache GET (Redis), the database only on a miss. This
times one round over N sessions whose snapshots are in a throwaway `redis-server` on a free
loopback port (the steady state): wall time (what the revocation bound grows by when the
hub's event was lost) and CPU time (what the process pays every period).

    uv run python bench/session_recheck.py [--sessions 1000] [--rounds 5]

JSON goes to stdout.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/session_recheck.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import json
import statistics
import time

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import principal as principals
from app.core.cache import RedisCache
from tests.support.servers import RedisServer, running

SNAPSHOT = {"user_id": 1, "role": "user", "is_active": True, "is_verified": True}


async def measure(redis_url: str, sessions: int, rounds: int) -> dict[str, object]:
    redis = Redis.from_url(redis_url)
    cache = RedisCache(redis)
    # Every lookup hits the cache: a database query here would be a bug, so none is possible.
    no_database: async_sessionmaker[AsyncSession] = async_sessionmaker()
    try:
        for n in range(sessions):
            await cache.set(principals._key(f"s{n}"), json.dumps(SNAPSHOT).encode(), 600)
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(rounds):
            started, started_cpu = time.perf_counter(), time.process_time()
            for n in range(sessions):
                live = await principals.session_is_live(
                    cache=cache, sessionmaker=no_database, user_id=1, session_id=f"s{n}"
                )
                assert live
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    finally:
        await redis.aclose()
    return {
        "sessions": sessions,
        "rounds": rounds,
        "round_wall_ms_median": round(statistics.median(wall) * 1000, 1),
        "round_cpu_ms_median": round(statistics.median(cpu) * 1000, 1),
        "cpu_us_per_session": round(statistics.median(cpu) / sessions * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with running(RedisServer(), "redis-server") as server:
        result = asyncio.run(measure(server.url, args.sessions, args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
