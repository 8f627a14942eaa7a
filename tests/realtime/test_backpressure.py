"""RT-5 over real sockets: a client that stops reading is dropped (1013) once its bounded
send queue is full, and the others in the room keep receiving everything, in order."""

import asyncio
import json
import socket
from urllib.parse import urlsplit

from tests.support.live import DEADLINE, LiveFactory, close_code_of, next_of
from tests.support.waiting import eventually_async

MESSAGES = 200
PAYLOAD = "x" * 40_000  # big frames fill the socket buffers quickly


async def test_a_client_that_never_reads_is_dropped_while_others_keep_receiving(
    live: LiveFactory,
) -> None:
    async with live(
        ws_send_queue_size=8,
        rate_limit_chat_message="100000/minute",
        chat_message_max_length=50_000,
        ws_max_message_bytes=128 * 1024,
    ) as server:
        sender, fast, slow = [await server.factory.account() for _ in range(3)]
        # The slow client reads as little as it can: the library stops reading the socket
        # after one unread message, and a fixed kernel receive buffer (no autotuning up to
        # 32 MiB) fills soon. Not smaller: below two segments (64 KiB on loopback) the window
        # would reopen only on zero-window probes, and the final drain would crawl.
        url = urlsplit(server.url)
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        raw.connect((url.hostname, url.port))
        raw.setblocking(False)
        async with (
            server.ws(
                "/ws/chat/flood", subprotocols=["bearer", slow.access_token], sock=raw,
                max_queue=1, max_size=None,
            ) as slow_ws,
            server.ws(
                "/ws/chat/flood", subprotocols=["bearer", fast.access_token], max_size=None
            ) as fast_ws,
            server.ws(
                "/ws/chat/flood", subprotocols=["bearer", sender.access_token], max_size=None
            ) as sender_ws,
        ):  # fmt: skip
            for ws, account in ((slow_ws, slow), (fast_ws, fast), (sender_ws, sender)):
                while (await next_of(ws, "join"))["user"]["id"] != account.id:
                    pass
            manager = server.realtime.manager
            assert manager.members("chat:flood") == 3

            async def send_all() -> None:
                for n in range(MESSAGES):
                    await sender_ws.send(
                        json.dumps({"type": "message", "content": f"{n}{PAYLOAD}"})
                    )

            async def receive_all(ws: object) -> list[int]:
                return [
                    int((await next_of(ws, "message"))["content"].removesuffix(PAYLOAD))  # type: ignore[arg-type]
                    for _ in range(MESSAGES)
                ]

            sending = asyncio.create_task(send_all())
            fast_got = asyncio.create_task(receive_all(fast_ws))
            sender_got = asyncio.create_task(receive_all(sender_ws))
            await eventually_async(
                lambda: manager.members("chat:flood") == 2,
                timeout=DEADLINE,
                interval=0.005,
                what="the slow client dropped",
            )
            # Read now: the close frame is queued behind everything the socket still holds.
            assert await close_code_of(slow_ws) == 1013
            await sending
            assert await fast_got == list(range(MESSAGES))
            assert await sender_got == list(range(MESSAGES))
            assert manager.count == 2
