"""A real Celery worker for tests and bench: `app worker` in its own process group, as
deployed (tests.support.processes.GroupProcess), and the helpers of the real-worker fixtures
(tests/plugins/workers.py): the stack they yield and waits for a task to finish.

The worker and the in-process API share one settings dict, passed to the worker as
environment variables, so both sides see the same database, broker and data directory.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.config import Settings
from app.jobs.models import FINISHED, Job
from tests.support.processes import GroupProcess, LogWatch, tail
from tests.support.waiting import eventually_async

__all__ = [
    "APP",
    "STOP_DEADLINE_SECONDS",
    "TASK_DEADLINE_SECONDS",
    "JobsStack",
    "WorkerProcess",
    "run_by_name",
    "subprocess_env",
    "wait_for_task",
]

APP = str(Path(sys.executable).parent / "app")
READY_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 30.0
TASK_DEADLINE_SECONDS = 60.0


def subprocess_env(values: dict[str, str]) -> dict[str, str]:
    """Our environment minus anything that configures the app, plus `values`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(values)
    return env


class WorkerProcess:
    def __init__(
        self, values: dict[str, str], log_file: Path, *, concurrency: int = 2, queues: str = ""
    ) -> None:
        self.values = values
        self.log_file = log_file
        self.concurrency = concurrency
        self.queues = queues
        self.group: GroupProcess | None = None

    def start(self) -> None:
        argv = [APP, "worker", "-c", str(self.concurrency)]
        if self.queues:
            argv += ["-Q", self.queues]
        # A restarted worker appends to the same log: only its own ready line counts.
        watch = LogWatch(self.log_file)
        self.group = GroupProcess(
            argv, env=subprocess_env(self.values), stdout=self.log_file, name="worker"
        )
        self.group.wait_until(
            lambda: watch.has(" ready."), timeout=READY_DEADLINE_SECONDS, what="the ready line"
        )

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): running tasks finish; the group is killed after a deadline."""
        if self.group is not None:
            self.group.stop(signal.SIGTERM, grace=STOP_DEADLINE_SECONDS, leader_only=True)

    def kill(self) -> None:
        """SIGKILL to the worker and its pool processes: a crash, nothing cleaned up."""
        if self.group is not None:
            self.group.kill()

    def tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)


@dataclass
class JobsStack:
    broker: str
    settings: Settings
    values: dict[str, str]  # the same settings, as the worker's environment
    worker: WorkerProcess


async def wait_for_task(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    task_id: str,
    *,
    until: frozenset[str] = frozenset(FINISHED),
    deadline: float = TASK_DEADLINE_SECONDS,
    stack: JobsStack | None = None,
) -> dict[str, Any]:
    """Poll the task API until the task reaches one of `until` (finished, by default)."""

    async def reached() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/tasks/{task_id}", headers=headers)
        if response.status_code == 404:  # sent without a row: the worker makes it
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["state"] in until else None

    try:
        found: dict[str, Any] = await eventually_async(
            reached, timeout=deadline, what=f"task {task_id} to reach {sorted(until)}"
        )
    except AssertionError as exc:
        log = stack.worker.tail() if stack is not None else ""
        raise AssertionError(f"{exc}\n{log}") from None
    return found


async def run_by_name(app: FastAPI, stack: JobsStack, name: str) -> Job:
    """Send by name without a row, as beat does; the task makes its row when it starts."""
    task_id = await app.state.jobs.send(name)

    async def finished() -> Job | None:
        async with app.state.services.sessionmaker() as session:
            job: Job | None = await session.get(Job, task_id)
        return job if job is not None and job.state in FINISHED else None

    try:
        done: Job = await eventually_async(
            finished, timeout=TASK_DEADLINE_SECONDS, what=f"{name} to finish"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.worker.tail()}") from None
    return done
