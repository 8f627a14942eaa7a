"""RT-1: `WS /ws/chat/{room}`: join a room, send messages, see everyone's as they arrive."""

import json
import logging
import re
from typing import TypeGuard

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError

from app.auth.principal import Principal
from app.core.schemas import NO_NUL_PATTERN
from app.realtime import service, ws
from app.realtime.dependencies import RealtimeDep
from app.realtime.errors import RoomForbidden
from app.realtime.limits import LocalWindow
from app.realtime.manager import CLOSE_FORBIDDEN, CLOSE_POLICY, Subscriber
from app.realtime.models import ChatRoom
from app.realtime.runtime import Realtime
from app.realtime.schemas import ROOM_NAME_PATTERN, ChatUser

logger = logging.getLogger("app.realtime")
router = APIRouter(tags=["realtime"])
_ROOM_NAME = re.compile(ROOM_NAME_PATTERN)
_NO_NUL = re.compile(NO_NUL_PATTERN)


def _event(kind: str, room: str, user: ChatUser) -> bytes:
    """Join, leave and typing: not stored, so no id (nothing to resume)."""
    return json.dumps({"type": kind, "room": room, "user": user.model_dump()}).encode()


@router.websocket("/ws/chat/{room}")
async def chat_socket(websocket: WebSocket, room: str, rt: RealtimeDep) -> None:
    auth = await ws.authenticate(websocket, rt)
    if auth is None:
        return
    member = await _join(websocket, rt, auth.principal, room)
    if member is None:
        return
    await ws.serve(
        websocket,
        rt,
        auth=auth,
        channels=[member.channel],
        on_frame=member.on_frame,
        missed=member.missed,
        latest=member.latest,
        on_open=member.joined,
        on_close=member.left,
    )


async def _join(
    websocket: WebSocket, rt: Realtime, principal: Principal, room: str
) -> "_Member | None":
    """The room, if this principal may be in it; otherwise the socket is closed with why."""
    if not _ROOM_NAME.match(room):
        await ws.close(websocket, CLOSE_POLICY, "invalid room name")
        return None
    async with rt.sessionmaker() as session:
        try:
            chat_room = await service.open_room(session=session, name=room, principal=principal)
        except RoomForbidden as exc:
            await ws.close(websocket, CLOSE_FORBIDDEN, exc.message)
            return None
        author = await service.chat_user(session=session, user_id=principal.id)
    return _Member(rt, chat_room, author)


class _Member:
    """One connection's part in a room: what `ws.serve` calls back into."""

    def __init__(self, rt: Realtime, room: ChatRoom, author: ChatUser) -> None:
        self.rt, self.room, self.author = rt, room, author
        self.channel = service.chat_channel(room.name)
        # Held for as long as this connection is (the runtime keeps room locks weakly).
        self.room_lock = rt.room_lock(room.name)
        self.presence = LocalWindow(rt.policies.chat_presence)  # this connection's typing

    async def publish(self, frame: bytes) -> None:
        try:
            await self.rt.manager.hub.publish(self.channel, frame)
        except (RedisError, OSError) as exc:  # stored messages are caught up on reconnect
            logger.warning("chat frame not published to %s: %s", self.channel, exc)

    async def missed(self, after_id: int) -> list[tuple[int, str]]:
        async with self.rt.sessionmaker() as session:
            messages = await service.missed_messages(
                session=session, room=self.room, after_id=after_id
            )
        return [(m.id, m.model_dump_json()) for m in messages]

    async def latest(self) -> int:
        async with self.rt.sessionmaker() as session:
            return await service.latest_message_id(session=session, room=self.room)

    async def on_frame(self, subscriber: Subscriber, data: dict[str, object]) -> None:
        kind = data["type"]
        if kind not in ("message", "typing"):
            raise ws.PolicyViolation(f"unknown frame type {str(kind)[:40]!r}")
        rt = self.rt
        refused = await self._throttled(kind)
        if refused is not None:
            subscriber.offer(None, refused)
            return
        if kind == "typing":
            await self.publish(_event("typing", self.room.name, self.author))
            return
        content = data.get("content")
        if not self._valid(content):
            message = (
                f"content must be 1 to {rt.settings.chat_message_max_length} characters of text"
            )
            subscriber.offer(None, ws.error_frame("validation_error", message))
            return
        async with self.room_lock, rt.sessionmaker() as session:
            stored = await service.post_message(
                session=session, room=self.room, author=self.author, content=content
            )
            await self.publish(stored.model_dump_json().encode())

    async def _throttled(self, kind: object) -> str | None:
        """An error frame for a frame over a limit: typing per connection, all per user."""
        if kind == "typing" and (retry_after := self.presence.hit()) is not None:
            message = "Too many presence changes"
            return ws.error_frame("rate_limited", message, retry_after=retry_after)
        decision = await self.rt.limiter.hit(self.rt.policies.chat_message, str(self.author.id))
        if decision is not None and not decision.allowed:
            retry_after = int(decision.headers()["Retry-After"])
            return ws.error_frame("rate_limited", "Too many messages", retry_after=retry_after)
        return None

    def _valid(self, content: object) -> TypeGuard[str]:
        return (
            isinstance(content, str)
            and bool(content.strip())
            and len(content) <= self.rt.settings.chat_message_max_length
            and bool(_NO_NUL.match(content))
        )

    # Presence in a big room would cost N frames per arrival, N² to fill it: there, only the
    # newcomer hears its own join (its sign that it is in), and nobody hears leaves.
    def _presence_is_broadcast(self) -> bool:
        return self.rt.manager.members(self.channel) <= self.rt.settings.chat_presence_max_members

    async def joined(self, subscriber: Subscriber) -> None:
        if self._presence_is_broadcast():
            await self.publish(_event("join", self.room.name, self.author))
        else:
            subscriber.offer(None, _event("join", self.room.name, self.author).decode())

    async def left(self) -> None:
        if self._presence_is_broadcast():
            await self.publish(_event("leave", self.room.name, self.author))
