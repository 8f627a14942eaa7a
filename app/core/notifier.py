"""`Notifier`: how code below the realtime feature tells a user something.

app.realtime's NotificationService stores a notification and pushes it to the user's sockets;
realtime sits among the features, above the domains and the job machinery that need to notify
(an order's owner on each status change, a task's owner when it ends). They name this
protocol instead, and each process's composition root hands the real service in: the API's
lifespan (app/main.py) as `app.state.notifier`, read by `NotifierDep` in app.core.dependencies;
the worker's root (app/worker.py) through app.jobs.runtime.use_notifier.
"""

from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession


class Notifier(Protocol):
    async def send_to_user(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        kind: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> object: ...
