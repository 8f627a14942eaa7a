"""An exhausted connection pool answers 503 with Retry-After in the envelope, not 500 (issue
13, item 3): streams no longer hold connections, but a burst can still exhaust the pool."""

from sqlalchemy import text

from app.core.errors import POOL_RETRY_AFTER
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import BuildClient


async def test_an_exhausted_pool_answers_503_with_retry_after(build_client: BuildClient) -> None:
    async with build_client(
        database_pool_size=1, database_max_overflow=0, database_pool_timeout_seconds=0.2
    ) as (app, client):
        owner = await Factory(client, app).account()
        async with app.state.services.engine.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's only connection, kept busy
            response = await client.get("/api/v1/users/me", headers=owner.headers)
        assert_envelope(response, 503, "service_unavailable")
        assert response.headers["Retry-After"] == POOL_RETRY_AFTER
        # Freed, the same request is served: nothing was left broken by the timeout.
        response = await client.get("/api/v1/users/me", headers=owner.headers)
        assert response.status_code == 200, response.text
