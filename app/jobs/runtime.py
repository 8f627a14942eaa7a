"""What a task body needs in a worker process: an event loop, the database, storage, HTTP.

Task bodies reuse the API's async services, so each worker process keeps one event loop and
runs coroutines on it (`run`). Everything is made lazily in the process that uses it: a
worker forks its pool processes, and connections must never cross a fork.
"""

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.http import create_http_client
from app.core.notifier import Notifier
from app.core.pubsub import Publisher, create_publisher
from app.core.storage import Storage, create_storage
from app.jobs.service import Jobs

T = TypeVar("T")


# Realtime's NotificationService, which this machinery can't import (app.core.notifier): the
# worker's composition root (app/worker.py) hands it in through `use_notifier`.
NotifierFactory = Callable[[Publisher | None], Notifier]
_notifier_factory: NotifierFactory | None = None


def use_notifier(factory: NotifierFactory) -> None:
    """Called once by app/worker.py, before any task runs (and before the pool forks)."""
    global _notifier_factory  # noqa: PLW0603 - one composition root per process
    _notifier_factory = factory


@dataclass
class WorkerRuntime:
    settings: Settings
    celery: Celery
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    engine: AsyncEngine = field(init=False)
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)
    storage: Storage = field(init=False)
    jobs: Jobs = field(init=False)
    notifications: Notifier = field(init=False)
    _http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.engine = create_engine(self.settings)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.storage = create_storage(self.settings)
        self.jobs = Jobs(
            self.celery,
            max_active_per_owner=self.settings.user_max_active_jobs,
            retry_after_seconds=self.settings.user_jobs_retry_after_seconds,
        )
        # With Redis, notifications reach every API process; in embedded mode the API relays
        # them from the database (app/realtime/relay.py), so there is nothing to publish to.
        if _notifier_factory is None:
            raise RuntimeError("No notifier: app.worker (the worker's root) calls use_notifier")
        self._publisher = create_publisher(self.settings.redis_url)
        self.notifications = _notifier_factory(self._publisher)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @property
    def http(self) -> httpx.AsyncClient:
        # Made on first use, inside the running loop that will use it.
        if self._http is None:
            self._http = create_http_client()
        return self._http

    def close(self) -> None:
        async def close() -> None:
            if self._http is not None:
                await self._http.aclose()
            await self.storage.close()
            if self._publisher is not None:
                await self._publisher.close()
            await self.engine.dispose()

        self.run(close())
        self.loop.close()


_runtimes: dict[int, WorkerRuntime] = {}


def get_runtime(celery: Celery, settings: Settings) -> WorkerRuntime:
    pid = os.getpid()
    runtime = _runtimes.get(pid)
    if runtime is None:
        _runtimes.clear()  # a parent's runtime, inherited through fork: never touch it
        runtime = _runtimes[pid] = WorkerRuntime(settings, celery)
    return runtime


def discard_runtime() -> None:
    """Forget this process's runtime: a time limit may have interrupted its loop mid-step."""
    _runtimes.pop(os.getpid(), None)
