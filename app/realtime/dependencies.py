"""Load-or-raise dependencies for the realtime REST routes."""

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import SecurityScopes
from starlette.requests import HTTPConnection

from app.auth.dependencies import BearerToken, CurrentPrincipal, get_principal, require_active
from app.auth.permissions import Scope
from app.auth.principal import Principal
from app.core.dependencies import SessionDep
from app.realtime import service
from app.realtime.models import ChatRoom
from app.realtime.runtime import Realtime
from app.realtime.schemas import ROOM_NAME_PATTERN

RoomName = Annotated[str, Path(pattern=ROOM_NAME_PATTERN, description="Room name")]


async def readable_room(
    room: RoomName, principal: CurrentPrincipal, session: SessionDep
) -> ChatRoom:
    return await service.readable_room(session=session, name=room, principal=principal)


async def stream_principal(
    request: Request,
    bearer: BearerToken,
    token: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="For EventSource, which can't send headers (never logged); "
            "prefer the Authorization header",
        ),
    ] = None,
) -> Principal:
    principal = await get_principal(SecurityScopes([Scope.PROFILE]), request, bearer or token)
    return require_active(principal)


async def get_realtime(connection: HTTPConnection) -> Realtime:
    """The realtime runtime the lifespan started (core can't name `Realtime`, so it sits here);
    an HTTPConnection, so WebSocket handlers take it too."""
    rt: Realtime = connection.app.state.realtime
    return rt


ReadableRoom = Annotated[ChatRoom, Depends(readable_room)]
StreamPrincipal = Annotated[Principal, Depends(stream_principal)]
RealtimeDep = Annotated[Realtime, Depends(get_realtime)]
