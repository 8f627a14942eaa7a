"""REST for chat history and rooms (RT-1) and notifications (RT-2)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.auth.dependencies import AdminPrincipal, CurrentPrincipal
from app.core.dependencies import SessionDep
from app.core.schemas import PrimaryKey
from app.realtime import service
from app.realtime.dependencies import ReadableRoom, RealtimeDep
from app.realtime.schemas import (
    BroadcastCreate,
    ChatMessagePage,
    MemberAdd,
    NotificationPage,
    NotificationRead,
    RoomCreate,
    RoomRead,
)

chat_router = APIRouter(prefix="/chat", tags=["chat"])
notifications_router = APIRouter(prefix="/notifications", tags=["notifications"])

Limit = Annotated[int, Query(ge=1, le=100, description="Items per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="From the previous page")]


@chat_router.get("/rooms", response_model=list[RoomRead])
async def list_rooms(principal: CurrentPrincipal, session: SessionDep) -> list[RoomRead]:
    """Public rooms and the members-only rooms you belong to."""
    rooms = await service.list_rooms(session=session, principal=principal)
    return [RoomRead.model_validate(room) for room in rooms]


@chat_router.post("/rooms", response_model=RoomRead, status_code=status.HTTP_201_CREATED)
async def create_room(
    data: RoomCreate, principal: CurrentPrincipal, session: SessionDep
) -> RoomRead:
    """Create a room (you become its first member); 409 if the name is taken."""
    room = await service.create_room(session=session, data=data, owner=principal)
    return RoomRead.model_validate(room)


@chat_router.post("/rooms/{room}/members", status_code=status.HTTP_204_NO_CONTENT)
async def add_member(
    data: MemberAdd, room: ReadableRoom, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Let a user into a room (the room's creator or an admin)."""
    await service.add_member(session=session, room=room, user_id=data.user_id, actor=principal)


@chat_router.get("/rooms/{room}/messages", response_model=ChatMessagePage)
async def room_messages(
    room: ReadableRoom, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> ChatMessagePage:
    """A room's history, newest first, by cursor."""
    items, next_cursor = await service.history(
        session=session, room=room, limit=limit, cursor=cursor
    )
    return ChatMessagePage(items=items, next_cursor=next_cursor)


@notifications_router.get("", response_model=NotificationPage)
async def list_notifications(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    unread_only: bool = False,
) -> NotificationPage:
    """Your notifications and broadcasts, newest first, by cursor."""
    items, next_cursor = await service.list_notifications(
        session=session, user_id=principal.id, limit=limit, cursor=cursor, unread_only=unread_only
    )
    return NotificationPage(items=items, next_cursor=next_cursor)


@notifications_router.post("/{notification_id}/read", status_code=status.HTTP_204_NO_CONTENT)
async def mark_read(
    notification_id: PrimaryKey, principal: CurrentPrincipal, session: SessionDep
) -> None:
    """Mark one notification read; someone else's is 404."""
    await service.mark_read(session=session, user_id=principal.id, notification_id=notification_id)


@notifications_router.post("/read-all", status_code=status.HTTP_204_NO_CONTENT)
async def mark_all_read(principal: CurrentPrincipal, session: SessionDep) -> None:
    """Mark every notification you can see read."""
    await service.mark_all_read(session=session, user_id=principal.id)


@notifications_router.post(
    "/broadcast", response_model=NotificationRead, status_code=status.HTTP_201_CREATED
)
async def broadcast(
    data: BroadcastCreate, _admin: AdminPrincipal, session: SessionDep, rt: RealtimeDep
) -> NotificationRead:
    """Send a notification to everyone (admin)."""
    return await rt.notifier.broadcast(
        session=session, kind=data.kind, title=data.title, body=data.body, data=data.data
    )
