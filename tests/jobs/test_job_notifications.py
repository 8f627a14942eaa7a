"""RT-2 meets JOBS: when a user's task ends in a real worker, the owner hears of it live on
the WebSocket and on the SSE stream of a real server. On the embedded stack the worker can't
reach the API's in-process hub (the API relays from the database); on the Redis stack the
worker publishes through Redis."""

import asyncio
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from app.jobs.models import Job
from app.main import create_app
from tests.support.factories import Account, Factory
from tests.support.live import DEADLINE, LiveServer, next_of, ready, serve, sse
from tests.support.workers import JobsStack


async def test_a_finished_task_notifies_its_owner_on_ws_and_sse(jobs_stack: JobsStack) -> None:
    app = create_app(jobs_stack.settings)
    async with (
        serve(app, jobs_stack.settings) as url,
        httpx.AsyncClient(base_url=url, timeout=DEADLINE) as http,
    ):
        server = LiveServer(app, url, http, Factory(http, app))
        owner: Account = await server.factory.account()
        async with (
            server.ws("/ws/notifications", subprotocols=["bearer", owner.access_token]) as ws,
            sse(server, owner) as stream,
        ):
            await ready(ws)
            async with app.state.services.sessionmaker() as session:
                job: Job = await app.state.jobs.enqueue(
                    session, "app.noop", "done", owner_id=owner.id
                )

            on_ws = await _notification(ws)
            on_sse = (await stream.next_notification()).json()

        assert on_ws == on_sse
        assert on_ws["kind"] == "job.succeeded"
        assert on_ws["title"] == "Test task finished"  # the task's title names it
        assert on_ws["data"]["task_id"] == job.id
        assert on_ws["data"]["state"] == "SUCCESS"
        assert on_ws["data"]["result"] == {"echo": "done"}
        listed = await http.get("/api/v1/notifications", headers=owner.headers)
        assert [n["id"] for n in listed.json()["items"]] == [on_ws["id"]]


async def _notification(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE * 2):
        return await next_of(ws, "notification", timeout=DEADLINE * 2)
