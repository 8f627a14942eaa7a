"""A file download holds no database connection while its body is sent (issue 13, item 3):
its row is loaded in a session closed when the route returns, not the request's session,
which would live until the last byte (and a stalled reader would keep its connection)."""

import os

import httpx
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from tests.support.factories import Factory

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(200 * 1024)


async def test_a_download_holds_no_connection_while_it_sends(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    uploaded = await client.post(
        "/api/v1/files", files={"file": ("a.png", PNG, "image/png")}, headers=owner.headers
    )
    assert uploaded.status_code == 201, uploaded.text
    pool = app.state.services.engine.pool
    checked_out: list[int] = []

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        async def spying_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                checked_out.append(pool.checkedout())
            await send(message)

        await app(scope, receive, spying_send)

    transport = httpx.ASGITransport(app=spy)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as spied:
        url = f"/api/v1/files/{uploaded.json()['id']}/content"
        response = await spied.get(url, headers=owner.headers)
    assert response.status_code == 200
    assert response.content == PNG
    assert checked_out
    assert max(checked_out) == 0
