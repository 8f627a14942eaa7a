import shutil
from pathlib import Path

import httpx

from app.main import create_app
from tests.support.assertions import sample
from tests.support.settings import TEST_SECRET, BuildClient, make_settings


async def test_requests_are_counted_by_route_template(build_client: BuildClient) -> None:
    async with build_client() as (_, client):
        labels = {"method": "GET", "route": "/api/v1/items/{item_id}", "status": "404"}
        before = sample((await client.get("/metrics")).text, "http_requests_total", labels)
        for item_id in (101, 102, 103):  # three ids, one series
            await client.get(f"/api/v1/items/{item_id}")
        text = (await client.get("/metrics")).text
        assert sample(text, "http_requests_total", labels) == before + 3
        histogram = {"method": "GET", "route": "/api/v1/items/{item_id}"}
        assert sample(text, "http_request_duration_seconds_count", histogram) >= 3
        assert "http_requests_in_flight" in text
        assert 'route="/api/v1/items/101"' not in text


async def test_unmatched_paths_share_one_series(build_client: BuildClient) -> None:
    async with build_client() as (_, client):
        for n in range(3):
            await client.get(f"/scan/{n}")
        text = (await client.get("/metrics")).text
        assert "/scan/1" not in text
        assert sample(text, "http_requests_total", {"route": "<unmatched>", "status": "404"}) >= 3


async def test_metrics_need_a_token_in_production(tmp_path: Path, sqlite_template: Path) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    for token, expected in ((None, 404), ("metrics-token-123", 401)):
        settings = make_settings(
            tmp_path, environment="production", secret_key=TEST_SECRET, metrics_token=token
        )
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            assert (await client.get("/metrics")).status_code == expected
            if token:
                wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                right = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                assert right.status_code == 200
                assert "http_requests_total" in right.text
