from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.core.db import utcnow
from app.jobs import heartbeat
from app.main import create_app
from tests.support.settings import make_settings


async def test_liveness(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_reports_the_database(client: httpx.AsyncClient) -> None:
    body = (await client.get("/health/ready")).json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["latency_ms"] >= 0


async def test_readiness_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    for url in (
        "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere",
        f"sqlite+aiosqlite:///{tmp_path}/missing-dir/app.db",
    ):
        app = create_app(make_settings(tmp_path, url))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/health/ready")
                assert response.status_code == 503
                body = response.json()
                assert body["status"] == "unavailable"
                assert body["checks"]["database"]["status"] == "down"
                # Liveness does no I/O, so it stays up.
                assert (await client.get("/health")).status_code == 200


async def test_readiness_reads_the_jobs_heartbeat(client: httpx.AsyncClient, app: FastAPI) -> None:
    """No heartbeat yet: unknown, and still ok (no beat may be deployed). An old one is stale:
    degraded but 200. A fresh one (the upsert replacing the old row) is ok again."""
    body = (await client.get("/health/ready")).json()
    assert body["jobs"] == {"status": "unknown", "last_heartbeat": None, "age_seconds": None}
    assert body["status"] == "ok"

    stale_after = app.state.services.settings.heartbeat_stale_seconds
    async with app.state.services.sessionmaker() as session:
        await heartbeat.record(session, "test:1", at=utcnow() - timedelta(seconds=stale_after + 5))
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["jobs"]["status"] == "stale"
    assert response.json()["jobs"]["age_seconds"] > stale_after

    async with app.state.services.sessionmaker() as session:
        await heartbeat.record(session, "test:2")
    body = (await client.get("/health/ready")).json()
    assert body["status"] == "ok"
    assert body["jobs"]["status"] == "ok"
    assert body["jobs"]["age_seconds"] < stale_after
