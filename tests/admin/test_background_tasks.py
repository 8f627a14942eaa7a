"""Admin view of the in-process background tasks (JOBS-8), and the job gauges they refresh."""

import asyncio

import httpx
from fastapi import FastAPI

from app.auth.models import Role
from tests.support.assertions import assert_envelope, sample
from tests.support.factories import Factory
from tests.support.waiting import eventually_async

URL = "/api/v1/admin/background-tasks"


async def test_admins_list_and_cancel_background_tasks(
    client: httpx.AsyncClient, app: FastAPI, factory: Factory
) -> None:
    admin, user = await factory.account(Role.ADMIN), await factory.account()

    async def forever() -> None:
        await asyncio.Event().wait()

    info = app.state.services.background.spawn("test-forever", forever)
    listed = await client.get(URL, headers=admin.headers)
    assert listed.status_code == 200
    by_name = {task["name"]: task for task in listed.json()}
    assert by_name["job-metrics"]["status"] == "running"  # the lifespan's own chore
    assert by_name["test-forever"]["id"] == info.id

    cancelled = await client.delete(f"{URL}/{info.id}", headers=admin.headers)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None

    assert_envelope(await client.get(URL, headers=user.headers), 403, "forbidden")
    assert_envelope(await client.delete(f"{URL}/{info.id}", headers=user.headers), 403, "forbidden")
    assert (await client.get(URL)).status_code == 401
    assert_envelope(
        await client.delete(f"{URL}/{'a' * 32}", headers=admin.headers), 404, "not_found"
    )
    assert_envelope(
        await client.delete(f"{URL}/nope", headers=admin.headers), 422, "validation_error"
    )


async def test_job_gauges_show_waiting_messages_and_job_states(
    build_client: object, shared_state: str | None
) -> None:
    """No worker runs here: whatever is sent waits in the queue (SQLite broker, or Redis
    lists when REDIS_URL makes Redis the broker), and the chore's gauges show it."""
    async with build_client(job_metrics_refresh_seconds=0.1) as (app, client):  # type: ignore[operator]
        factory = Factory(client, app)
        owner = await factory.account()
        async with app.state.services.sessionmaker() as session:
            for n in range(3):
                await app.state.jobs.enqueue(session, "app.noop", n, owner_id=owner.id)
        await app.state.jobs.send("app.images.process", 1)  # no row: the images queue

        async def gauges_show_the_queues() -> str | None:
            text = (await client.get("/metrics")).text
            queued = (
                sample(text, "jobs_queue_depth", {"queue": "default"}) == 3
                and sample(text, "jobs_queue_depth", {"queue": "images"}) == 1
                and sample(text, "jobs_queue_depth", {"queue": "email"}) == 1
                and sample(text, "jobs_by_state", {"state": "PENDING"}) == 3
            )
            return text if queued else None

        text = await eventually_async(
            gauges_show_the_queues, timeout=10, what=f"queue gauges ({shared_state})"
        )
        assert sample(text, "jobs_queue_depth", {"queue": "default"}) == 3, shared_state
        assert sample(text, "jobs_queue_depth", {"queue": "images"}) == 1
        assert sample(text, "jobs_queue_depth", {"queue": "email"}) == 1  # the welcome mail
        assert sample(text, "jobs_by_state", {"state": "PENDING"}) == 3
        assert sample(text, "jobs_by_state", {"state": "SUCCESS"}) == 0
