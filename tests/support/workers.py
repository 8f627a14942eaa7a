"""A real Celery worker for tests and bench: `app worker` in its own process group, as
deployed (tests.support.processes.GroupProcess), and the helpers of the real-worker fixtures
(tests/plugins/workers.py): the stack they yield and waits for a task to finish.

The worker and the in-process API share one settings dict, passed to the worker as
environment variables, so both sides see the same database, broker and data directory.
"""

from __future__ import annotations

import contextlib
import json
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
    "WorkerSpares",
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


# What a spare runs. First the imports of `app worker` that read no setting (app.worker reads
# them when imported, so it waits; the modules of its TASK_MODULES, read from its source,
# declare shared tasks, which a Celery app made later registers when finalized, as when the
# worker imports them itself: no other module, so a missing entry still fails). Then, once a
# request comes on stdin, the command itself, with the environment, argv, stdin and output it
# would have had if started then, and the `app` script's sys.path. EOF instead ends it.
_SPARE_BOOT = """
import json, os, sys
sys.path[0] = {bin_dir!r}
import app.cli
import app.jobs.broker, app.jobs.celery_app, app.jobs.liveness, app.jobs.runtime
import app.realtime.service
import celery.apps.worker, celery.concurrency.prefork, celery.worker.consumer
import kombu.transport.redis, kombu.transport.sqlalchemy
import ast, importlib.util, pathlib
worker_source = importlib.util.find_spec("app.worker").origin
for node in ast.parse(pathlib.Path(worker_source).read_text()).body:
    if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "TASK_MODULES":
        for name in ast.literal_eval(node.value):
            __import__(name)
line = sys.stdin.buffer.readline()
if not line:
    sys.exit(0)
request = json.loads(line)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
os.dup2(log, 1)
os.dup2(log, 2)
os.close(log)
os.environ.clear()
os.environ.update(request["env"])
sys.argv = request["argv"]
sys.exit(app.cli.main())
"""


class WorkerSpares:
    """`app worker` processes started ahead of need, their imports done (~4-5 s of a worker's
    6-8 s start on a loaded CI machine), waiting to be told their environment and log.

    Once a worker taken from them is ready, another starts and imports while the tests run.
    A spare serves only environments that differ from its own by app settings (read by
    Settings() when the command runs, never at import); anything else (PYTHONPATH, metrics
    directories) starts cold.
    """

    def __init__(self, directory: Path, *, keep: int = 2) -> None:
        self.directory = directory
        self.base_env = subprocess_env({})
        self._count = 0
        # Two kept: a worker and the beat (or a restarted worker) right after it both find one
        # ready. One to begin with, importing while the caller sets up: a second would compete
        # with it for the CPU when the first is needed soonest. The oldest is taken first.
        self.keep = keep
        self._spares: list[GroupProcess] = [self._launch()]

    def _launch(self) -> GroupProcess:
        self._count += 1
        boot = _SPARE_BOOT.format(bin_dir=str(Path(APP).parent))
        return GroupProcess(
            [sys.executable, "-c", boot],
            env=self.base_env,
            stdout=self.directory / f"spare-{self._count}.log",  # until it is told its own
            name="worker",
            stdin_pipe=True,
        )

    @staticmethod
    def serves(values: dict[str, str]) -> bool:
        """Whether a spare may run with `values`: app settings only (see the class)."""
        return all(key.lower() in Settings.model_fields for key in values)

    def take(self, argv: list[str], values: dict[str, str], log_file: Path) -> GroupProcess | None:
        """The spare, now running `argv` with `values`; None if it can't serve them."""
        if not self.serves(values):
            return None
        spare = self._spares.pop(0) if self._spares else self._launch()
        if not spare.alive():  # it failed to import: a fresh one says why
            _discard(spare)
            spare = self._launch()
        stdin = spare.process.stdin
        assert stdin is not None
        request = {"argv": argv, "env": subprocess_env(values), "log": str(log_file)}
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.close()
        except BrokenPipeError:  # it died: the caller's wait says so, with the spare's own log
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        else:
            # Its output goes to the worker's log from now on; what it wrote before (an import
            # error) stays in its own, which a failure's description shows too.
            spare.stdout, spare.stderr = log_file, spare.stdout
        return spare

    def replenish(self) -> None:
        """Start spares up to `keep`: called once the worker taken is ready, so that their
        imports don't compete with its start for the CPU."""
        while len(self._spares) < self.keep:
            self._spares.append(self._launch())

    def close(self) -> None:
        while self._spares:
            _discard(self._spares.pop())


def _discard(spare: GroupProcess) -> None:
    """End a spare never taken: no request (EOF) ends it once imported, SIGTERM before."""
    if spare.process.stdin is not None:
        spare.process.stdin.close()
    spare.stop()


class WorkerProcess:
    def __init__(
        self,
        values: dict[str, str],
        log_file: Path,
        *,
        concurrency: int = 2,
        queues: str = "",
        spares: WorkerSpares | None = None,
    ) -> None:
        self.values = values
        self.log_file = log_file
        self.concurrency = concurrency
        self.queues = queues
        self.spares = spares
        self.group: GroupProcess | None = None

    def start(self) -> None:
        argv = [APP, "worker", "-c", str(self.concurrency)]
        if self.queues:
            argv += ["-Q", self.queues]
        # A restarted worker appends to the same log: only its own ready line counts.
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        watch = LogWatch(self.log_file)
        group = self.spares.take(argv, self.values, self.log_file) if self.spares else None
        if group is None:
            group = GroupProcess(
                argv, env=subprocess_env(self.values), stdout=self.log_file, name="worker"
            )
        self.group = group
        try:
            self._wait_ready(watch)
        finally:
            if self.spares is not None:
                self.spares.replenish()

    def _wait_ready(self, watch: LogWatch) -> None:
        assert self.group is not None
        self.group.wait_until(
            lambda: watch.has(" ready."), timeout=READY_DEADLINE_SECONDS, what="the ready line"
        )

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): running tasks finish; the group is killed after a deadline."""
        if self.group is not None:
            self.group.stop(signal.SIGTERM, grace=STOP_DEADLINE_SECONDS, leader_only=True)

    def begin_stop(self) -> None:
        """`stop` in two halves, for a caller with other work meanwhile: the SIGTERM now (to
        the main process alone: see GroupProcess.stop on billiard's lock)..."""
        if self.group is not None:
            self.group.send(signal.SIGTERM, leader_only=True)

    def stopped(self) -> bool:
        return self.group is None or not self.group.alive()

    def finish_stop(self) -> None:
        """...and the wait, then the group killed (after the deadline if still running)."""
        if self.group is not None:
            self.group.reap(STOP_DEADLINE_SECONDS)

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
