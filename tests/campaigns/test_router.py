"""The campaigns API is for admins only."""

import httpx

from tests.support.factories import Factory


async def test_campaigns_are_for_admins_and_validated(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.account()
    body = {"subject": "Hi", "body_text": "Hello"}
    forbidden = await client.post("/api/v1/campaigns/", json=body, headers=user.headers)
    assert forbidden.status_code == 403
    assert (await client.get("/api/v1/campaigns/", headers=user.headers)).status_code == 403
