"""In-process background work (JOBS-8): asyncio tasks with a status, cancel and a clean end.

For work that may be lost with the process (refreshing gauges, warming a cache): what must
not be lost goes to Celery. Each API process has its own manager, started and shut down by
the lifespan, so nothing outlives the app and nothing is left pending when the loop closes.
"""

import asyncio
import builtins
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.core.db import utcnow

logger = logging.getLogger("app.background")
CoroutineFactory = Callable[[], Coroutine[Any, Any, Any]]
MAX_ERROR_LENGTH = 500
RECANCEL_SECONDS = 0.1


class TaskStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class TaskInfo:
    id: str
    name: str
    status: TaskStatus = TaskStatus.RUNNING
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    error: str | None = None


class ShuttingDown(RuntimeError):
    pass


class TaskManager:
    def __init__(self, history: int = 100) -> None:
        self._history = history
        self._infos: OrderedDict[str, TaskInfo] = OrderedDict()  # oldest first
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # running only: strong references
        self._closed = False

    def spawn(self, name: str, factory: CoroutineFactory) -> TaskInfo:
        """Start `factory()` now; the factory (not a coroutine) so nothing is created, and
        left un-awaited, once the manager is closed."""
        if self._closed:
            raise ShuttingDown(f"not starting {name!r}: the manager is shutting down")
        info = TaskInfo(id=uuid.uuid4().hex, name=name)
        task = asyncio.create_task(factory(), name=f"background:{name}")
        self._infos[info.id] = info
        self._tasks[info.id] = task
        task.add_done_callback(lambda done: self._finished(info, done))
        return info

    def _finished(self, info: TaskInfo, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(info.id, None)
        info.finished_at = utcnow()
        if task.cancelled():
            info.status = TaskStatus.CANCELLED
        elif (exc := task.exception()) is not None:
            info.status = TaskStatus.FAILED
            info.error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
            logger.error("background task %s failed", info.name, exc_info=exc)
        else:
            info.status = TaskStatus.DONE
        self._trim()

    def _trim(self) -> None:
        """Forget the oldest finished tasks beyond the history size; running ones stay."""
        finished = [key for key, info in self._infos.items() if key not in self._tasks]
        for key in finished[: max(0, len(self._infos) - self._history)]:
            del self._infos[key]

    def list(self) -> list[TaskInfo]:
        """Newest first."""
        return list(reversed(self._infos.values()))

    async def cancel(self, task_id: str, *, wait: float = 1.0) -> TaskInfo | None:
        """Cancel and give the task `wait` seconds to unwind; None if unknown."""
        info = self._infos.get(task_id)
        task = self._tasks.get(task_id)
        if info is None or task is None:
            return info
        task.cancel()
        await asyncio.wait([task], timeout=wait)
        return info

    async def shutdown(self, grace: float = 5.0) -> builtins.list[str]:
        """Refuse new work, cancel everything and wait up to `grace` seconds. A task that
        swallows a cancellation is cancelled again until the deadline; returns the names of
        those still running then (logged: they will die with the loop)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._tasks and (remaining := deadline - loop.time()) > 0:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.wait(list(self._tasks.values()), timeout=min(RECANCEL_SECONDS, remaining))
        stuck = [self._infos[key].name for key in self._tasks]
        if stuck:
            logger.error("background tasks still running after %.1fs: %s", grace, stuck)
        return stuck
