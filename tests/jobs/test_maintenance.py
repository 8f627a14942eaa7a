"""JOBS-6 against a real worker on both brokers: a real `app beat` sends the heartbeat that
readiness reads; the job-row purge runs by name, as beat sends it. The other domains' purges
are tested beside them (tests/auth/test_tasks.py, tests/files/test_tasks.py)."""

import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.db import utcnow
from app.jobs.models import Job, JobState
from tests.support.factories import Factory
from tests.support.processes import GroupProcess
from tests.support.waiting import eventually_async
from tests.support.workers import (
    APP,
    STOP_DEADLINE_SECONDS,
    JobsStack,
    WorkerSpares,
    run_by_name,
    subprocess_env,
)

STALE_AFTER_SECONDS = 3.0


@pytest.fixture(scope="module")
def jobs_overrides() -> dict[str, str]:
    return {
        "HEARTBEAT_INTERVAL_SECONDS": "1",
        "HEARTBEAT_STALE_SECONDS": str(STALE_AFTER_SECONDS),
    }


class BeatProcess:
    """`app beat` as deployed, in its own process group, logging to a file."""

    def __init__(self, stack: JobsStack, spares: WorkerSpares) -> None:
        self.log_file = stack.settings.app_data_dir / "beat.log"
        # A spare runs any `app` command: beat imports what the worker does.
        group = spares.take([APP, "beat"], stack.values, self.log_file)
        if group is None:
            group = GroupProcess(
                [APP, "beat"], env=subprocess_env(stack.values), stdout=self.log_file
            )
        group.name = "beat"
        self.group = group

    def stop(self) -> None:
        self.group.stop(signal.SIGTERM, grace=STOP_DEADLINE_SECONDS)

    def tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


@pytest.fixture
def beat(jobs_stack: JobsStack, worker_spares: WorkerSpares) -> Iterator[BeatProcess]:
    process = BeatProcess(jobs_stack, worker_spares)
    try:
        yield process
    finally:
        process.stop()


async def _readiness(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_beat_heartbeat_shows_in_readiness_and_goes_stale_without_beat(
    jobs_stack: JobsStack, jobs_client: httpx.AsyncClient, beat: BeatProcess
) -> None:
    started = utcnow()

    async def fresh_heartbeat() -> dict[str, Any] | None:
        body = await _readiness(jobs_client)
        last = body["jobs"]["last_heartbeat"]
        fresh = body["jobs"]["status"] == "ok" and last and last > started.isoformat()
        return body if fresh else None

    try:
        body = await eventually_async(
            fresh_heartbeat, timeout=30, interval=0.1, what="a fresh beat heartbeat"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{beat.tail()}\n{jobs_stack.worker.tail()}") from None
    assert body["status"] == "ok"
    assert 0 <= body["jobs"]["age_seconds"] <= STALE_AFTER_SECONDS

    beat.stop()

    async def stale() -> dict[str, Any] | None:
        body = await _readiness(jobs_client)
        return body if body["jobs"]["status"] == "stale" else None

    body = await eventually_async(
        stale, timeout=STALE_AFTER_SECONDS + 10, interval=0.1, what="the heartbeat to go stale"
    )
    assert body["jobs"]["status"] == "stale", body
    assert body["jobs"]["age_seconds"] > STALE_AFTER_SECONDS
    assert body["status"] == "degraded"  # the API still serves: 200, not 503
    assert body["checks"]["database"]["status"] == "ok"


async def test_purge_jobs_removes_only_rows_finished_before_the_retention(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_factory: Factory
) -> None:
    user = await jobs_factory.account()
    now = utcnow()
    long_ago = now - timedelta(days=jobs_stack.settings.job_retention_days + 1)
    rows = {
        "old_success": (JobState.SUCCESS, long_ago),
        "old_failure": (JobState.FAILURE, long_ago),
        "old_revoked": (JobState.REVOKED, long_ago),
        "recent_success": (JobState.SUCCESS, now - timedelta(hours=1)),
        "old_but_pending": (JobState.PENDING, None),  # still queued: its owner must see it
        "old_but_running": (JobState.STARTED, None),
    }
    ids = {name: str(uuid.uuid4()) for name in rows}
    async with jobs_app.state.services.sessionmaker() as session:
        for name, (state, finished_at) in rows.items():
            session.add(
                Job(
                    id=ids[name],
                    name="app.noop",
                    owner_id=user.id,
                    state=state,
                    created_at=long_ago,
                    finished_at=finished_at,
                )
            )
        await session.commit()

    job = await run_by_name(jobs_app, jobs_stack, "app.maintenance.purge_jobs")

    assert job.state == "SUCCESS", job.error
    assert job.result is not None
    assert job.result["jobs"] >= 3
    async with jobs_app.state.services.sessionmaker() as session:
        left = set((await session.execute(select(Job.id))).scalars())
    assert not {ids["old_success"], ids["old_failure"], ids["old_revoked"]} & left
    assert {ids["recent_success"], ids["old_but_pending"], ids["old_but_running"]} <= left
    assert job.id in left  # the purge's own row was not finished when it ran
    listed = await jobs_factory.client.get("/api/v1/tasks/", headers=user.headers)
    assert listed.status_code == 200
    assert ids["old_success"] not in {t["id"] for t in listed.json()["items"]}
