"""Chat rooms, messages and notifications: persisted first, then published on the hub.

The database is the record; the hub only tells live clients sooner. A client that was away
(or connected to a process whose Redis subscription was reconnecting) says the last id it
saw, and reads what it missed from here.
"""

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, exists, func, insert, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.auth.principal import Principal
from app.core.config import Settings
from app.core.db import BigIntPK, UTCDateTime, utcnow
from app.core.pagination import after_cursor, cursor_page
from app.core.pubsub import Publisher, create_publisher
from app.realtime.errors import (
    NotificationNotFound,
    NotRoomManager,
    RoomExists,
    RoomForbidden,
    RoomNotFound,
)
from app.realtime.models import ChatMessage, ChatRoom, ChatRoomMember, Notification
from app.realtime.models import NotificationRead as ReadMark
from app.realtime.schemas import ChatMessageRead, ChatUser, NotificationRead, RoomCreate
from app.users.errors import UserNotFound

logger = logging.getLogger("app.realtime")
CATCH_UP_LIMIT = 1000  # more missed than this: the client pages the rest over REST
BROADCAST_CHANNEL = "notifications:all"


def chat_channel(room: str) -> str:
    return f"chat:{room}"


def user_channel(user_id: int) -> str:
    return f"notifications:user:{user_id}"


# -- rooms ---------------------------------------------------------------------------------


async def _find_room(session: AsyncSession, name: str) -> ChatRoom | None:
    room: ChatRoom | None = await session.scalar(select(ChatRoom).where(ChatRoom.name == name))
    return room


async def _is_member(session: AsyncSession, room: ChatRoom, user_id: int) -> bool:
    found = await session.scalar(
        select(ChatRoomMember.user_id).where(
            ChatRoomMember.room_id == room.id, ChatRoomMember.user_id == user_id
        )
    )
    return found is not None


async def _check_access(session: AsyncSession, room: ChatRoom, principal: Principal) -> None:
    if (
        room.is_private
        and not principal.is_admin
        and not await _is_member(session, room, principal.id)
    ):
        raise RoomForbidden(room.name)


async def readable_room(*, session: AsyncSession, name: str, principal: Principal) -> ChatRoom:
    room = await _find_room(session, name)
    if room is None:
        raise RoomNotFound(name)
    await _check_access(session, room, principal)
    return room


async def open_room(*, session: AsyncSession, name: str, principal: Principal) -> ChatRoom:
    """The room a WebSocket joins: a public room is created on first use."""
    room = await _find_room(session, name)
    if room is None:
        session.add(ChatRoom(name=name, is_private=False, created_by=principal.id))
        try:
            await session.commit()
        except IntegrityError:  # created by someone else meanwhile
            await session.rollback()
        room = await _find_room(session, name)
        assert room is not None
    await _check_access(session, room, principal)
    return room


async def create_room(*, session: AsyncSession, data: RoomCreate, owner: Principal) -> ChatRoom:
    room = ChatRoom(name=data.name, is_private=data.is_private, created_by=owner.id)
    session.add(room)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise RoomExists(data.name) from exc
    session.add(ChatRoomMember(room_id=room.id, user_id=owner.id))
    await session.commit()
    return room


async def add_member(
    *, session: AsyncSession, room: ChatRoom, user_id: int, actor: Principal
) -> None:
    if room.created_by != actor.id and not actor.is_admin:
        raise NotRoomManager()
    if await session.get(User, user_id) is None:
        raise UserNotFound(user_id)
    if await _is_member(session, room, user_id):
        return
    session.add(ChatRoomMember(room_id=room.id, user_id=user_id))
    try:
        await session.commit()
    except IntegrityError:  # added by a concurrent request: the outcome is the same
        await session.rollback()


async def list_rooms(*, session: AsyncSession, principal: Principal) -> Sequence[ChatRoom]:
    member_of = select(ChatRoomMember.room_id).where(ChatRoomMember.user_id == principal.id)
    statement = select(ChatRoom).order_by(ChatRoom.name).limit(200)
    if not principal.is_admin:
        statement = statement.where(or_(~ChatRoom.is_private, ChatRoom.id.in_(member_of)))
    return (await session.execute(statement)).scalars().all()


# -- messages ------------------------------------------------------------------------------


async def chat_user(*, session: AsyncSession, user_id: int) -> ChatUser:
    username = await session.scalar(select(User.username).where(User.id == user_id))
    if username is None:
        raise UserNotFound(user_id)
    return ChatUser(id=user_id, username=username)


async def post_message(
    *, session: AsyncSession, room: ChatRoom, author: ChatUser, content: str
) -> ChatMessageRead:
    message = ChatMessage(room_id=room.id, user_id=author.id, content=content)
    session.add(message)
    await session.commit()
    return _message_read(room, message, author.username)


def _message_rows(room: ChatRoom) -> Any:
    return (
        select(ChatMessage, User.username)
        .join(User, User.id == ChatMessage.user_id)
        .where(ChatMessage.room_id == room.id)
    )


def _message_read(room: ChatRoom, message: ChatMessage, username: str) -> ChatMessageRead:
    return ChatMessageRead(
        id=message.id,
        room=room.name,
        user=ChatUser(id=message.user_id, username=username),
        content=message.content,
        created_at=message.created_at,
    )


async def history(
    *, session: AsyncSession, room: ChatRoom, limit: int, cursor: str | None
) -> tuple[list[ChatMessageRead], str | None]:
    """Newest first, keyset on the id: an old page costs what the first one does."""
    statement = after_cursor(_message_rows(room), ChatMessage.id, cursor=cursor, limit=limit)
    rows, next_cursor = cursor_page(
        (await session.execute(statement)).all(), limit=limit, key=lambda row: row[0].id
    )
    return [_message_read(room, message, username) for message, username in rows], next_cursor


async def missed_messages(
    *, session: AsyncSession, room: ChatRoom, after_id: int
) -> list[ChatMessageRead]:
    statement = (
        _message_rows(room)
        .where(ChatMessage.id > after_id)
        .order_by(ChatMessage.id)
        .limit(CATCH_UP_LIMIT)
    )
    rows = (await session.execute(statement)).all()
    return [_message_read(room, message, username) for message, username in rows]


async def latest_message_id(*, session: AsyncSession, room: ChatRoom) -> int:
    """Where a client that gave no last id stands: the room's newest message (or 0)."""
    found = await session.scalar(
        select(func.max(ChatMessage.id)).where(ChatMessage.room_id == room.id)
    )
    return int(found or 0)


# -- notifications -------------------------------------------------------------------------


def _visible_to(user_id: int) -> ColumnElement[bool]:
    return or_(Notification.user_id == user_id, Notification.user_id.is_(None))


def notification_read(notification: Notification, *, read: bool = False) -> NotificationRead:
    return NotificationRead(
        id=notification.id,
        kind=notification.kind,
        title=notification.title,
        body=notification.body,
        data=notification.data,
        broadcast=notification.user_id is None,
        read=read,
        created_at=notification.created_at,
    )


def notification_channel(notification: Notification) -> str:
    user_id = notification.user_id
    return BROADCAST_CHANNEL if user_id is None else user_channel(user_id)


class NotificationService:
    """Stores a notification, then publishes it to the user's live connections everywhere.

    In an API process the publisher is the app's hub. Another process (a Celery worker) uses
    `from_settings`: with Redis it publishes to every API process; in embedded mode it has
    nothing to publish to, and the API process relays new rows from the database instead
    (app/realtime/relay.py).
    """

    def __init__(
        self,
        publisher: Publisher | None,
        *,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self._publisher = publisher
        self._on_published = on_published

    @classmethod
    @asynccontextmanager
    async def from_settings(cls, settings: Settings) -> AsyncIterator["NotificationService"]:
        publisher = create_publisher(settings.redis_url)
        try:
            yield cls(publisher)
        finally:
            if publisher is not None:
                await publisher.close()

    async def send_to_user(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        kind: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> NotificationRead:
        notification = Notification(
            user_id=user_id, kind=kind, title=title, body=body, data=data or {}
        )
        return await self._store_and_publish(session, notification)

    async def broadcast(
        self,
        *,
        session: AsyncSession,
        kind: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> NotificationRead:
        notification = Notification(
            user_id=None, kind=kind, title=title, body=body, data=data or {}
        )
        return await self._store_and_publish(session, notification)

    async def _store_and_publish(
        self, session: AsyncSession, notification: Notification
    ) -> NotificationRead:
        session.add(notification)
        await session.commit()
        read = notification_read(notification)
        if self._on_published is not None:
            self._on_published(notification.id)
        if self._publisher is not None:
            try:
                await self._publisher.publish(
                    notification_channel(notification), read.model_dump_json().encode()
                )
            except (RedisError, OSError) as exc:
                # Stored all the same: clients get it when they next (re)connect.
                logger.warning("notification %s not published: %s", notification.id, exc)
        return read


async def list_notifications(
    *,
    session: AsyncSession,
    user_id: int,
    limit: int,
    cursor: str | None,
    unread_only: bool,
) -> tuple[list[NotificationRead], str | None]:
    statement = (
        select(Notification, ReadMark.read_at)
        .outerjoin(
            ReadMark,
            (ReadMark.notification_id == Notification.id) & (ReadMark.user_id == user_id),
        )
        .where(_visible_to(user_id))
    )
    if unread_only:
        statement = statement.where(ReadMark.read_at.is_(None))
    statement = after_cursor(statement, Notification.id, cursor=cursor, limit=limit)
    rows, next_cursor = cursor_page(
        (await session.execute(statement)).all(), limit=limit, key=lambda row: row[0].id
    )
    return [notification_read(n, read=read_at is not None) for n, read_at in rows], next_cursor


async def missed_notifications(
    *, session: AsyncSession, user_id: int, after_id: int
) -> list[NotificationRead]:
    statement = (
        select(Notification, ReadMark.read_at)
        .outerjoin(
            ReadMark,
            (ReadMark.notification_id == Notification.id) & (ReadMark.user_id == user_id),
        )
        .where(_visible_to(user_id), Notification.id > after_id)
        .order_by(Notification.id)
        .limit(CATCH_UP_LIMIT)
    )
    rows = (await session.execute(statement)).all()
    return [notification_read(n, read=read_at is not None) for n, read_at in rows]


async def latest_notification_id(*, session: AsyncSession) -> int:
    """Where a client that gave no last id stands: the newest notification of anyone's (ids
    above it are all newer, whoever they are for), read from the primary key."""
    return int(await session.scalar(select(func.max(Notification.id))) or 0)


async def mark_read(*, session: AsyncSession, user_id: int, notification_id: int) -> None:
    visible = await session.scalar(
        select(Notification.id).where(Notification.id == notification_id, _visible_to(user_id))
    )
    if visible is None:
        raise NotificationNotFound(notification_id)
    already = await session.scalar(
        select(ReadMark.read_at).where(
            ReadMark.notification_id == notification_id, ReadMark.user_id == user_id
        )
    )
    if already is not None:
        return
    session.add(ReadMark(notification_id=notification_id, user_id=user_id))
    try:
        await session.commit()
    except IntegrityError:  # marked by a concurrent request: same outcome
        await session.rollback()


async def mark_all_read(*, session: AsyncSession, user_id: int) -> None:
    already = exists().where(
        ReadMark.notification_id == Notification.id, ReadMark.user_id == user_id
    )
    unread = select(
        Notification.id, literal(user_id, BigIntPK), literal(utcnow(), UTCDateTime())
    ).where(_visible_to(user_id), ~already)
    await session.execute(
        insert(ReadMark).from_select(["notification_id", "user_id", "read_at"], unread)
    )
    try:
        await session.commit()
    except IntegrityError:  # a concurrent mark: whatever is left is read by the next call
        await session.rollback()
