import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from app.core.db import utcnow
from app.core.storage import LocalStorage
from app.jobs import heartbeat
from app.main import create_app
from tests.support.settings import make_settings


async def test_liveness(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["version"]) == ("ok", "1.0.0")  # API_VERSION's default
    assert before <= datetime.fromisoformat(body["time"]) <= datetime.now(UTC)


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


async def test_readiness_reuses_one_round_of_checks(tmp_path: Path) -> None:
    """Within READINESS_CACHE_SECONDS every caller, even 50 at once, gets the answer of one
    round of checks: a probe flood costs the database one query."""
    app = create_app(make_settings(tmp_path, readiness_cache_seconds=60))
    async with app.router.lifespan_context(app):
        probes = 0

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            nonlocal probes
            probes += statement == "SELECT 1"

        engine = app.state.services.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(50)))
            assert {a.status_code for a in answers} == {200}
            assert len({a.text for a in answers}) == 1  # the same latencies: one round
            assert probes == 1


async def test_readiness_checks_storage_can_take_an_upload(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Permission bits say nothing of a read-only mount or a full disk (and nothing at all to
    root): the check writes a file, and wants room for one more largest upload."""
    storage = app.state.services.storage
    if not isinstance(storage, LocalStorage):
        pytest.skip("the local backend's check")
    assert (await client.get("/health/ready")).json()["checks"]["storage"]["status"] == "ok"

    storage.min_free_bytes = 10**18  # more than any disk: "full"
    full = (await client.get("/health/ready")).json()
    assert full["status"] == "degraded"
    assert full["checks"]["storage"] == {
        **full["checks"]["storage"],
        "status": "down",
        "error": "StorageFull",
    }
    storage.min_free_bytes = 0

    shutil.rmtree(storage.temp_dir, ignore_errors=True)
    storage.temp_dir.parent.mkdir(parents=True, exist_ok=True)
    storage.temp_dir.write_bytes(b"")  # a file where the directory must be: writes fail
    broken = (await client.get("/health/ready")).json()
    assert broken["checks"]["storage"]["status"] == "down"
    storage.temp_dir.unlink()
