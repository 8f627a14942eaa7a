"""RT-2: `WS /ws/notifications`: the caller's own notifications and broadcasts, live.

The user comes from the token, never from the URL: nobody can listen to someone else's.
"""

from fastapi import APIRouter, WebSocket

from app.realtime import service, ws
from app.realtime.dependencies import RealtimeDep
from app.realtime.manager import Subscriber

router = APIRouter(tags=["realtime"])


@router.websocket("/ws/notifications")
async def notifications_socket(websocket: WebSocket, rt: RealtimeDep) -> None:
    auth = await ws.authenticate(websocket, rt)
    if auth is None:
        return
    user_id = auth.principal.id

    async def missed(after_id: int) -> list[tuple[int, str]]:
        async with rt.sessionmaker() as session:
            found = await service.missed_notifications(
                session=session, user_id=user_id, after_id=after_id
            )
        return [(n.id, n.model_dump_json()) for n in found]

    async def latest() -> int:
        async with rt.sessionmaker() as session:
            return await service.latest_notification_id(session=session)

    async def on_frame(_subscriber: Subscriber, data: dict[str, object]) -> None:
        raise ws.PolicyViolation("this socket only sends; mark notifications read over REST")

    await ws.serve(
        websocket,
        rt,
        auth=auth,
        channels=[service.user_channel(user_id), service.BROADCAST_CHANNEL],
        on_frame=on_frame,
        missed=missed,
        latest=latest,
    )
