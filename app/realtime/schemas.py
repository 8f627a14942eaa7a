from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from app.core.db import MAX_JSON_ID
from app.core.schemas import NO_NUL_PATTERN, APIModel, CursorPage, InputModel

ROOM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
RoomName = Annotated[str, StringConstraints(pattern=ROOM_NAME_PATTERN)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)]
Body = Annotated[str, StringConstraints(max_length=5000, pattern=NO_NUL_PATTERN)]
Kind = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.:-]{1,50}$")]


class ChatUser(APIModel):
    id: int
    username: str


class RoomCreate(InputModel):
    name: RoomName
    is_private: bool = Field(default=False, description="Members-only: joined by invitation")


class RoomRead(APIModel):
    id: int
    name: str
    is_private: bool
    created_by: int | None
    created_at: datetime


class MemberAdd(InputModel):
    user_id: Annotated[int, Field(ge=1, le=MAX_JSON_ID)]


class ChatMessageRead(APIModel):
    """What the room receives over the WebSocket, and what history returns."""

    type: Literal["message"] = "message"
    id: int
    room: str
    user: ChatUser
    content: str
    created_at: datetime


class ChatMessagePage(CursorPage[ChatMessageRead]):
    items: list[ChatMessageRead] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for older messages; null at end")


class NotificationRead(APIModel):
    type: Literal["notification"] = "notification"
    id: int
    kind: str
    title: str
    body: str
    data: dict[str, Any]
    broadcast: bool = Field(description="Sent to everyone, not to you alone")
    read: bool
    created_at: datetime


class NotificationPage(CursorPage[NotificationRead]):
    items: list[NotificationRead] = Field(description="Newest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for older ones; null at end")


class BroadcastCreate(InputModel):
    kind: Kind = "announcement"
    title: Title
    body: Body = ""
    data: dict[str, Any] = Field(default_factory=dict)
