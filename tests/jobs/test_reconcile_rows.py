"""The job reconciler on both brokers (embedded SQLite and Redis), through the task API: a job
whose message is gone is sent again from its row; one lost too often fails, and its owner reads
why in the task and in a notification."""

import uuid
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from app.core.db import utcnow
from app.jobs.celery_app import RECONCILE_TASK
from app.jobs.models import FINISHED, Job, JobState
from app.jobs.service import LOST_ERROR
from tests.support.factories import Account, Factory
from tests.support.workers import JobsStack

MAX_REQUEUES = 1
DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def jobs_overrides() -> dict[str, str]:
    return {"JOB_RECONCILE_GRACE_SECONDS": "1", "JOB_RECONCILE_MAX_REQUEUES": str(MAX_REQUEUES)}


async def _lost_job(app: FastAPI, owner: Account, echo: str, *, requeues: int) -> str:
    """A queued job's row whose message never reached (or no longer is in) the broker."""
    job = Job(
        id=str(uuid.uuid4()),
        name="app.noop", owner_id=owner.id, state=JobState.PENDING, args=[echo], kwargs={},
        queue="default", requeues=requeues, created_at=utcnow() - timedelta(minutes=5),
    )  # fmt: skip
    async with app.state.services.sessionmaker() as session:
        session.add(job)
        await session.commit()
    return job.id


async def _reconciled(
    app: FastAPI, client: httpx.AsyncClient, owner: Account, task_id: str, stack: JobsStack
) -> dict[str, Any]:
    """Run the reconciler (as beat does, here every two seconds) until the job is finished."""
    body: dict[str, Any] = {}
    with anyio.move_on_after(DEADLINE_SECONDS):
        while True:
            await app.state.jobs.send(RECONCILE_TASK)
            with anyio.move_on_after(2.0):
                while body.get("state") not in FINISHED:
                    response = await client.get(f"/api/v1/tasks/{task_id}", headers=owner.headers)
                    body = response.json()
                    await anyio.sleep(0.1)  # polling the task API, bounded by the deadline
            if body.get("state") in FINISHED:
                return body
    raise AssertionError(f"job {task_id} still {body.get('state')}\n{stack.worker.tail()}")


async def test_a_job_whose_message_is_gone_is_sent_again(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:  # fmt: skip
    owner = await jobs_factory.account()
    task_id = await _lost_job(jobs_app, owner, f"lost on {jobs_stack.broker}", requeues=0)

    body = await _reconciled(jobs_app, jobs_client, owner, task_id, jobs_stack)

    assert body["state"] == "SUCCESS", (body, jobs_stack.worker.tail())
    assert body["result"] == {"echo": f"lost on {jobs_stack.broker}"}
    async with jobs_app.state.services.sessionmaker() as session:
        job = await session.get(Job, task_id)
    assert job is not None
    assert job.requeues == 1


async def test_a_job_lost_too_often_fails_and_its_owner_is_told_why(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:  # fmt: skip
    owner = await jobs_factory.account()
    task_id = await _lost_job(jobs_app, owner, "given up", requeues=MAX_REQUEUES)

    body = await _reconciled(jobs_app, jobs_client, owner, task_id, jobs_stack)

    assert body["state"] == "FAILURE", body
    assert body["error"] == LOST_ERROR
    listed = await jobs_client.get("/api/v1/notifications", headers=owner.headers)
    (notification,) = listed.json()["items"]
    assert notification["kind"] == "job.failed"
    assert notification["body"] == LOST_ERROR
    assert notification["data"]["task_id"] == task_id
