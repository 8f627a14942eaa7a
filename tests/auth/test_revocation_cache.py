"""The per-session snapshot cache never outvotes the database on revocation."""

from collections.abc import AsyncIterator

from fastapi import FastAPI
from sqlalchemy import select

from app.auth import principal as principals
from app.auth.models import AuthSession
from app.core.cache import Cache, MemoryCache
from tests.support.factories import Factory
from tests.support.settings import BuildClient
from tests.support.waiting import eventually_async


async def test_lost_cache_revokes_nothing_back_to_life(build_client: BuildClient) -> None:
    async with build_client() as (app, client):
        account = await Factory(client, app).account()
        await client.post("/api/v1/auth/logout", headers=account.headers)
        cache: Cache = app.state.services.cache
        await cache.delete_prefix("auth:")  # Redis restarted, or evicted everything
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 401


async def test_a_snapshot_loaded_before_revocation_cannot_overwrite_it(
    build_client: BuildClient,
) -> None:
    async with build_client() as (app, client):
        account = await Factory(client, app).account()
        me = await client.get("/api/v1/users/me", headers=account.headers)
        assert me.status_code == 200
        cache: Cache = app.state.services.cache
        key = next(iter([k async for k in _session_keys(cache, app)]))
        live_snapshot = await cache.get(key)
        assert live_snapshot is not None
        await cache.delete(key)  # as if the snapshot expired...
        await client.post("/api/v1/auth/logout", headers=account.headers)  # ...a logout lands
        # ...and a slow request that read the database before the logout stores what it saw.
        await cache.set(key, live_snapshot, ttl=60, only_if_new=True)
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 401


async def _session_keys(cache: Cache, app: FastAPI) -> AsyncIterator[str]:
    async with app.state.services.sessionmaker() as session:
        for session_id in (await session.execute(select(AuthSession.id))).scalars():
            key = f"auth:session:{session_id}"
            if await cache.get(key) is not None:
                yield key


class FlakyCache(MemoryCache):
    """A cache whose writes fail while `down` is set, like an unreachable Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def set(self, key: str, value: bytes, ttl: float, *, only_if_new: bool = False) -> bool:
        if self.down:
            return False
        return await super().set(key, value, ttl, only_if_new=only_if_new)


async def test_tombstones_are_retried_until_the_cache_is_back() -> None:
    cache = FlakyCache()
    await cache.set("auth:session:s1", b'{"live": true}', ttl=60)  # a snapshot from before
    cache.down = True
    await principals.mark_revoked(cache=cache, session_ids=["s1"], ttl=60)
    assert await cache.get("auth:session:s1") == b'{"live": true}'
    cache.down = False  # the partition heals; the old snapshot is still there
    await eventually_async(  # the retry lands by itself
        lambda: _is_revoked(cache), timeout=5, what="the tombstone to be written"
    )


async def _is_revoked(cache: FlakyCache) -> bool:
    return await cache.get("auth:session:s1") == b"revoked"
