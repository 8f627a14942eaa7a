"""Cached item reads never show stale data after a write (memory and Redis caches)."""

from app.auth.models import Role
from tests.support.factories import Factory
from tests.support.settings import BuildClient


async def test_read_after_write_is_fresh(build_client: BuildClient) -> None:
    async with build_client() as (app, client):
        factory = Factory(client, app)
        owner = await factory.account()
        item = await factory.item(owner, title="First")
        path = f"/api/v1/items/{item['id']}"
        for _ in range(2):  # the second read is a cache hit
            assert (await client.get(path)).json()["title"] == "First"
            assert (await client.get(path, headers=owner.headers)).json()["title"] == "First"
        listing = (await client.get("/api/v1/items/")).json()
        assert [i["title"] for i in listing["items"]] == ["First"]

        await client.patch(path, headers=owner.headers, json={"title": "Second"})
        assert (await client.get(path)).json()["title"] == "Second"
        assert (await client.get("/api/v1/items/")).json()["items"][0]["title"] == "Second"

        await factory.item(owner, title="Another")
        assert (await client.get("/api/v1/items/")).json()["total"] == 2

        await client.delete(path, headers=owner.headers)
        assert (await client.get(path)).status_code == 404
        assert (await client.get("/api/v1/items/")).json()["total"] == 1
        admin = await factory.account(Role.ADMIN)
        assert (await client.get(path, headers=admin.headers)).json()["deleted_at"] is not None


async def test_revocation_beats_a_cached_session(build_client: BuildClient) -> None:
    async with build_client() as (app, client):
        factory = Factory(client, app)
        account = await factory.account()
        for _ in range(2):  # the snapshot is cached now
            assert (
                await client.get("/api/v1/users/me", headers=account.headers)
            ).status_code == 200
        await client.post("/api/v1/auth/logout", headers=account.headers)
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 401
        assert (await client.get("/api/v1/items/1", headers=account.headers)).status_code == 401
