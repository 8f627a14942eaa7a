"""The task API against a real worker: owners see their tasks, nobody else does (JOBS-7)."""

import uuid

import httpx
from fastapi import FastAPI

from app.auth.models import Role
from app.core.request_context import REQUEST_ID
from app.jobs.celery_app import queue_for
from app.jobs.models import Job, JobState
from tests.support.factories import Factory
from tests.support.waiting import eventually_async
from tests.support.workers import JobsStack, wait_for_task


async def _enqueue(
    app: FastAPI, owner_id: int, *args: object, countdown: float | None = None
) -> str:
    async with app.state.services.sessionmaker() as session:
        job: Job = await app.state.jobs.enqueue(
            session, "app.noop", *args, owner_id=owner_id, countdown=countdown
        )
        return job.id


async def test_owner_sees_a_task_run_to_success(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    task_id = await _enqueue(jobs_app, owner.id, {"n": 1})

    body = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    assert body["state"] == "SUCCESS"
    assert body["result"] == {"echo": {"n": 1}}
    assert body["name"] == "app.noop"
    assert body["started_at"] is not None
    assert body["finished_at"] >= body["started_at"]
    listed = (await jobs_client.get("/api/v1/tasks/", headers=owner.headers)).json()
    assert [task["id"] for task in listed["items"]] == [task_id]


async def test_another_users_task_is_not_found_but_an_admin_sees_it(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    stranger = await jobs_factory.account()
    admin = await jobs_factory.account(Role.ADMIN)
    task_id = await _enqueue(jobs_app, owner.id)
    await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    for method in ("GET", "DELETE"):
        response = await jobs_client.request(
            method, f"/api/v1/tasks/{task_id}", headers=stranger.headers
        )
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    listed = (await jobs_client.get("/api/v1/tasks/", headers=stranger.headers)).json()
    assert listed["total"] == 0
    seen = await jobs_client.get(f"/api/v1/tasks/{task_id}", headers=admin.headers)
    assert seen.status_code == 200
    assert seen.json()["state"] == "SUCCESS"
    anonymous = await jobs_client.get(f"/api/v1/tasks/{task_id}")
    assert anonymous.status_code == 401


async def test_a_cancelled_task_never_runs(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    # The row is committed and cancelled before its message is sent: the worker cannot start
    # it first however slow this machine is (a countdown raced a 10 s stall in CI).
    job = Job(
        id=str(uuid.uuid4()), name="app.noop", owner_id=owner.id, state=JobState.PENDING,
        args=["cancelled"], kwargs={}, queue=queue_for("app.noop"),
    )  # fmt: skip
    async with jobs_app.state.services.sessionmaker() as session:
        session.add(job)
        await session.commit()
    response = await jobs_client.delete(f"/api/v1/tasks/{job.id}", headers=owner.headers)
    assert response.status_code == 202
    assert response.json()["state"] == "REVOKED"
    await jobs_app.state.jobs.send("app.noop", "cancelled", task_id=job.id)

    async def delivered() -> Job | None:
        async with jobs_app.state.services.sessionmaker() as session:
            row = await session.get(Job, job.id)
            return row if row is not None and row.worker is not None else None

    # The worker records who received the message, then skips it (mark_started).
    row = await eventually_async(delivered, timeout=30, what="the cancelled job's delivery")
    assert row.state == JobState.REVOKED, jobs_stack.worker.tail()
    body = (await jobs_client.get(f"/api/v1/tasks/{job.id}", headers=owner.headers)).json()
    assert body["state"] == "REVOKED"
    assert body["started_at"] is None
    assert body["cancel_requested"] is True
    again = await jobs_client.delete(f"/api/v1/tasks/{job.id}", headers=owner.headers)
    assert again.status_code == 202  # idempotent


async def test_the_request_id_reaches_the_tasks_logs(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    token = REQUEST_ID.set("req-trace-4242")
    try:
        task_id = await _enqueue(jobs_app, owner.id)
    finally:
        REQUEST_ID.reset(token)
    await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    lines = await eventually_async(
        lambda: [
            line
            for line in jobs_stack.worker.tail(400).splitlines()
            if "noop ran" in line and task_id in line
        ],
        timeout=10,
        what=f"the worker's log line for {task_id}",
    )
    assert "req-trace-4242" in lines[0]


async def test_malformed_task_ids_are_refused(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    response = await jobs_client.get("/api/v1/tasks/not a task!", headers=owner.headers)
    assert response.status_code == 422
    missing = await jobs_client.get(
        "/api/v1/tasks/00000000-0000-0000-0000-000000000000", headers=owner.headers
    )
    assert missing.status_code == 404


async def test_a_task_sent_without_a_row_gets_one_when_it_runs(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    """What beat sends has no row yet: the worker records it, visible to admins."""
    admin = await jobs_factory.account(Role.ADMIN)
    task_id = await jobs_app.state.jobs.send("app.noop", "from beat")

    body = await wait_for_task(jobs_client, admin.headers, task_id, stack=jobs_stack)

    assert body["state"] == "SUCCESS"
    assert body["result"] == {"echo": "from beat"}
