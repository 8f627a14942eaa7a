"""Soak: a mixed workload for minutes against the service as deployed (issue 13 item 9).

Two `app api` processes, one `app worker` (default queues), PostgreSQL and Redis, all real and
started with the test harness (tests/support), loopback only. For `--duration` seconds the
client sends `--rate` operations per second (open loop, at most `--concurrency` in flight):
auth (login, refresh, users/me, logout), item CRUD and list, an upload and its download, an
export, chat messages over WebSockets (a few clients in one room, each message timed until
every other client has it), and image jobs polled to completion, whose notifications an SSE
stream per user reads. A warm-up (`--warmup` seconds of the same workload) comes first: the
start figures are taken after it, so imports, pools and caches filled once are not counted as
growth.

    uv run python -m bench.soak [--duration 600] [--rate 8] [--concurrency 16]

JSON on stdout: errors by kind and status (and socket errors), p50/p99 per kind, RSS of every
server process at start and end with growth in %, Redis `used_memory`, PostgreSQL connections,
jobs and notifications, and `goals` (0 errors, memory growth < 10%, no leaked connections).
Exit status 1 when a goal is missed. tests/system/test_soak.py runs the same code for 60 s.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/soak.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import io
import itertools
import json
import secrets
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from app.core.config import Settings
from tests.support.apis import APP, ApiFleet, ApiProcess, ApiSpec, api_env, fresh_redis_db
from tests.support.processes import HOST
from tests.support.servers import PostgresServer, RedisServer
from tests.support.workers import WorkerProcess

PASSWORD = "Soak-password-1"
SOAK_REDIS_DB = 13  # a logical database no other test flushes
USERS = 6  # the load is spread over them: per-user caps (streams, jobs, chat rate) hold
CHAT_CLIENTS = 4
ROOM = "soak"
REQUEST_TIMEOUT = 30.0
JOB_DEADLINE = 60.0
CHAT_DEADLINE = 15.0
SETTLE_DEADLINE = 30.0  # for jobs, notifications and connections once the load stops
POLL_INTERVAL = 0.25
MEMORY_GOAL_PERCENT = 10.0
THUMBNAIL = {"op": "thumbnail", "size": 16}
TERMINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

# One cycle of the mix: each name is one operation (a few requests). Chat and jobs are rarer:
# per-user rate limits and the worker's pace bound them.
MIX = (
    "crud", "me", "list", "crud", "files", "me", "chat", "list", "auth", "export",
    "crud", "me", "chat", "list", "files", "job",
)  # fmt: skip


# -- the processes -------------------------------------------------------------------------


@dataclass
class Stack:
    apis: list[ApiProcess]
    worker: WorkerProcess
    redis: RedisServer
    database_url: str  # postgresql://, for asyncpg
    redis_url: str

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]


def migrate(env: dict[str, str], workdir: Path) -> None:
    result = subprocess.run(
        [APP, "migrate"], env=env, cwd=workdir, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"app migrate failed:\n{result.stdout}\n{result.stderr}")


@contextmanager
def soak_stack(
    workdir: Path, postgres: PostgresServer, redis_server: RedisServer
) -> Iterator[Stack]:
    """A fresh migrated database, two API processes and one worker sharing it and Redis."""
    url = postgres.create_database(f"soak_{secrets.token_hex(4)}")
    database_url = url.replace("postgresql+asyncpg://", "postgresql://")
    redis_url = fresh_redis_db(redis_server, SOAK_REDIS_DB)
    data_dir = workdir / "data"  # one storage for the APIs and the worker: jobs read uploads
    data_dir.mkdir(parents=True, exist_ok=True)
    env = api_env(data_dir, database_url=database_url, redis_url=redis_url)
    migrate(env, workdir)
    fleet = ApiFleet(workdir / "api-logs")
    worker = WorkerProcess(env, workdir / "worker.log")
    try:
        apis = fleet.start(ApiSpec("A", env), ApiSpec("B", env))
        worker.start()
        yield Stack(apis, worker, redis_server, database_url, redis_url)
    finally:
        try:
            worker.stop()
        finally:
            fleet.stop()


# -- what the servers hold -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass  # exited meanwhile
    return 0


def group_rss_kib(pgid: int) -> int:
    """Every process of a group: a worker's pool processes, a multi-worker API's children."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            total += rss_kib(int(entry.name))
    return total


async def database_state(database_url: str) -> dict[str, Any]:
    """Connections to the database by state and their backends' RSS (ours excluded)."""
    url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT pid, coalesce(state, '?') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            rows = [(int(pid), str(state)) for pid, state in result]
    finally:
        await engine.dispose()
    states: dict[str, int] = defaultdict(int)
    for _pid, state in rows:
        states[state] += 1
    return {
        "connections": len(rows),
        "by_state": dict(states),
        "backends_rss_kib": sum(rss_kib(pid) for pid, _state in rows),
    }


async def snapshot(stack: Stack) -> dict[str, Any]:
    with redis.Redis.from_url(stack.redis_url) as client:
        used_memory = int(client.info("memory")["used_memory"])
    database = await database_state(stack.database_url)
    rss = {f"api_{api.name}": group_rss_kib(api.group.pid) for api in stack.apis}
    assert stack.worker.group is not None
    rss["worker"] = group_rss_kib(stack.worker.group.pid)
    rss["postgres_backends"] = database["backends_rss_kib"]
    rss["redis"] = rss_kib(stack.redis.pid)
    return {"rss_kib": rss, "redis_used_memory": used_memory, "postgres": database}


# -- the client side -----------------------------------------------------------------------


@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    examples: list[str] = field(default_factory=list)

    def error(self, kind: str, what: str, detail: str) -> None:
        self.errors[kind][what] = self.errors[kind].get(what, 0) + 1
        if self.errors[kind][what] == 1:  # the first of each kind and status
            self.examples.append(f"{kind} {what}: {detail[:300]}")

    def summary(self) -> dict[str, Any]:
        kinds = sorted(set(self.latencies) | set(self.errors))
        return {kind: {"count": len(self.latencies[kind]),
                       "p50_ms": percentile(self.latencies[kind], 0.50),
                       "p99_ms": percentile(self.latencies[kind], 0.99),
                       "errors": self.errors.get(kind, {})} for kind in kinds}  # fmt: skip

    @property
    def error_count(self) -> int:
        return sum(sum(by.values()) for by in self.errors.values())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


class Unexpected(Exception):
    """A request answered with a status other than the one the workload expects."""


@dataclass
class User:
    username: str
    token: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


class Workload:
    def __init__(self, stack: Stack, recorder: Recorder, concurrency: int) -> None:
        self.stack = stack
        self.rec = recorder
        self.limit = asyncio.Semaphore(concurrency)
        self.users: list[User] = []
        self.next_user = itertools.cycle(range(USERS))
        self.png = tiny_png()
        self.jobs: dict[str, str] = {}  # task id -> last state seen
        self.job_owner: dict[str, str] = {}
        self.notified: set[str] = set()  # task ids seen on an SSE stream
        self.chat: list[ClientConnection] = []
        self.chat_waiters: dict[str, tuple[asyncio.Event, set[int]]] = {}
        self.chat_sender = itertools.cycle(range(CHAT_CLIENTS))
        self.behind = 0  # operations started late: the concurrency bound was reached
        self.readers: list[asyncio.Task[None]] = []
        self.stopping = False

    # -- plumbing ----------------------------------------------------------------------

    async def call(
        self, kind: str, client: httpx.AsyncClient, method: str, url: str, expect: int,
        **kwargs: Any,
    ) -> httpx.Response:  # fmt: skip
        started = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.rec.error(kind, f"socket:{type(exc).__name__}", str(exc))
            raise Unexpected(kind) from exc
        self.rec.latencies[kind].append(time.monotonic() - started)
        if response.status_code != expect:
            self.rec.error(kind, str(response.status_code), response.text)
            raise Unexpected(kind)
        return response

    def user(self) -> User:
        return self.users[next(self.next_user)]

    # -- setup -------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        for n in range(USERS):
            url = self.stack.urls[n % len(self.stack.urls)]
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT)
            )
            username = f"soak_{n}_{secrets.token_hex(3)}"
            body = {"username": username, "email": f"{username}@example.com",
                    "password": PASSWORD, "password_confirm": PASSWORD}  # fmt: skip
            await self.call("register", client, "POST", "/api/v1/auth/register", 202, json=body)
            tokens = await self.login(client, username)
            self.users.append(User(username, tokens["access_token"], client))
        for n, user in enumerate(self.users):
            self.readers.append(asyncio.create_task(self.read_sse(user, n)))
        for n in range(CHAT_CLIENTS):
            user = self.users[n]
            base = self.stack.urls[n % len(self.stack.urls)].replace("http://", "ws://", 1)
            ws = await stack.enter_async_context(
                connect(f"{base}/ws/chat/{ROOM}", subprotocols=["bearer", user.token])  # type: ignore[list-item]
            )
            self.chat.append(ws)
            self.readers.append(asyncio.create_task(self.read_chat(ws, n)))

    async def login(self, client: httpx.AsyncClient, username: str) -> dict[str, str]:
        response = await self.call(
            "login", client, "POST", "/api/v1/auth/token", 200,
            data={"username": username, "password": PASSWORD},
        )  # fmt: skip
        tokens: dict[str, str] = response.json()
        return tokens

    # -- readers -------------------------------------------------------------------------

    async def read_chat(self, ws: ClientConnection, n: int) -> None:
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "error":  # e.g. rate_limited: the rate is too high
                    self.rec.error("chat", f"frame:{frame.get('code')}", str(raw))
                elif frame.get("type") == "message":
                    waiter = self.chat_waiters.get(str(frame.get("content")))
                    if waiter is not None:
                        waiter[1].discard(n)
                        if not waiter[1]:
                            waiter[0].set()
        except WebSocketException as exc:
            if not self.stopping:
                self.rec.error("chat", f"socket:{type(exc).__name__}", str(exc))
        if not self.stopping:
            self.rec.error("chat", "closed", f"client {n}: code {ws.close_code}")

    async def read_sse(self, user: User, n: int) -> None:
        """One stream per user for the whole run; job notifications are counted by task id."""
        try:
            async with user.client.stream(
                "GET", "/api/v1/notifications/stream", headers=user.headers,
                timeout=httpx.Timeout(REQUEST_TIMEOUT, read=None),
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    self.rec.error("sse", str(response.status_code), await response.aread())  # type: ignore[arg-type]
                    return
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "notification":
                        data = json.loads(line[5:]).get("data") or {}
                        if "task_id" in data:
                            self.notified.add(str(data["task_id"]))
                    elif not line:
                        event = ""
        except httpx.HTTPError as exc:
            if not self.stopping:
                self.rec.error("sse", f"socket:{type(exc).__name__}", str(exc))
            return
        if not self.stopping:
            self.rec.error("sse", "ended", f"stream {n} ended early")

    # -- operations ----------------------------------------------------------------------

    async def op_me(self) -> None:
        user = self.user()
        await self.call("users_me", user.client, "GET", "/api/v1/users/me", 200,
                        headers=user.headers)  # fmt: skip

    async def op_list(self) -> None:
        user = self.user()
        await self.call("items_list", user.client, "GET", "/api/v1/items/?per_page=20", 200)

    async def op_auth(self) -> None:
        user = self.user()
        tokens = await self.login(user.client, user.username)
        refreshed = await self.call(
            "refresh", user.client, "POST", "/api/v1/auth/refresh", 200,
            json={"refresh_token": tokens["refresh_token"]},
        )  # fmt: skip
        pair = refreshed.json()
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        await self.call("users_me", user.client, "GET", "/api/v1/users/me", 200, headers=headers)
        # Ends the session it opened: sessions do not pile up over a long run.
        await self.call("logout", user.client, "POST", "/api/v1/auth/logout", 204,
                        headers=headers, json={"refresh_token": pair["refresh_token"]})  # fmt: skip

    async def op_crud(self) -> None:
        user = self.user()
        h = user.headers
        created = await self.call(
            "item_create", user.client, "POST", "/api/v1/items/", 201, headers=h,
            json={"title": f"soak {secrets.token_hex(4)}", "price": "9.99"},
        )  # fmt: skip
        path = f"/api/v1/items/{created.json()['id']}"
        await self.call("item_read", user.client, "GET", path, 200)
        await self.call("item_update", user.client, "PATCH", path, 200, headers=h,
                        json={"price": "10.50"})  # fmt: skip
        await self.call("item_delete", user.client, "DELETE", path, 204, headers=h)

    async def op_files(self) -> None:
        user = self.user()
        content = secrets.token_hex(16 * 1024).encode()  # 32 KiB
        uploaded = await self.call(
            "upload", user.client, "POST", "/api/v1/files", 201, headers=user.headers,
            files={"file": ("soak.txt", content, "text/plain")},
        )  # fmt: skip
        path = f"/api/v1/files/{uploaded.json()['id']}"
        downloaded = await self.call("download", user.client, "GET", f"{path}/content", 200,
                                     headers=user.headers)  # fmt: skip
        if downloaded.content != content:
            self.rec.error("download", "content", "the bytes differ from those uploaded")
        await self.call("file_delete", user.client, "DELETE", path, 204, headers=user.headers)

    async def op_export(self) -> None:
        user = self.user()
        await self.call("export", user.client, "GET", "/api/v1/exports/items?format=csv", 200,
                        headers=user.headers)  # fmt: skip

    async def op_chat(self) -> None:
        sender = next(self.chat_sender)
        content = f"soak {secrets.token_hex(6)}"
        done = asyncio.Event()
        self.chat_waiters[content] = (done, set(range(CHAT_CLIENTS)))
        started = time.monotonic()
        try:
            await self.chat[sender].send(json.dumps({"type": "message", "content": content}))
            async with asyncio.timeout(CHAT_DEADLINE):
                await done.wait()
            self.rec.latencies["chat"].append(time.monotonic() - started)
        except TimeoutError:
            self.rec.error("chat", "timeout", f"{content} not received by all within deadline")
        except WebSocketException as exc:
            self.rec.error("chat", f"socket:{type(exc).__name__}", str(exc))
        finally:
            del self.chat_waiters[content]

    async def op_job(self) -> None:
        user = self.user()
        uploaded = await self.call(
            "upload", user.client, "POST", "/api/v1/files", 201, headers=user.headers,
            files={"file": ("soak.png", self.png, "image/png")},
        )  # fmt: skip
        accepted = await self.call(
            "job_submit", user.client, "POST", "/api/v1/images/process", 202,
            headers=user.headers,
            json={"file_id": uploaded.json()["id"], "operations": [THUMBNAIL]},
        )  # fmt: skip
        task_id = str(accepted.json()["task_id"])
        self.jobs[task_id] = "submitted"
        self.job_owner[task_id] = user.username
        started = time.monotonic()
        while time.monotonic() - started < JOB_DEADLINE:
            polled = time.monotonic()
            response = await user.client.get(f"/api/v1/tasks/{task_id}", headers=user.headers)
            self.rec.latencies["task_poll"].append(time.monotonic() - polled)
            if response.status_code not in (200, 404):  # 404: the worker makes the row
                self.rec.error("job_poll", str(response.status_code), response.text)
                return
            state = response.json().get("state") if response.status_code == 200 else None
            if state is not None:
                self.jobs[task_id] = str(state)
            if state in TERMINAL_STATES:
                self.rec.latencies["job"].append(time.monotonic() - started)
                if state != "SUCCESS":
                    self.rec.error("job", str(state), response.text)
                return
            await asyncio.sleep(POLL_INTERVAL)  # a poll interval, not a stand-in for work
        self.rec.error("job", "timeout", f"task {task_id} not finished in {JOB_DEADLINE:.0f}s")

    # -- the open loop -------------------------------------------------------------------

    async def run(self, duration: float, rate: float) -> None:
        ops: dict[str, Callable[[], Awaitable[None]]] = {
            "crud": self.op_crud, "me": self.op_me, "list": self.op_list,
            "files": self.op_files, "chat": self.op_chat, "auth": self.op_auth,
            "export": self.op_export, "job": self.op_job,
        }  # fmt: skip
        running: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for n, name in enumerate(itertools.cycle(MIX)):
            due = started + n / rate
            if due >= started + duration:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.limit.locked():
                self.behind += 1
            await self.limit.acquire()
            task = asyncio.create_task(self.guarded(ops[name]))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def guarded(self, op: Callable[[], Awaitable[None]]) -> None:
        try:
            await op()
        except Unexpected:
            pass  # recorded where it happened
        finally:
            self.limit.release()

    async def settle_notifications(self) -> int:
        """Notifications of finished jobs not seen on any stream within the deadline."""
        deadline = time.monotonic() + SETTLE_DEADLINE
        while True:
            missing = [
                t for t, s in self.jobs.items() if s in TERMINAL_STATES and t not in self.notified
            ]
            if not missing or time.monotonic() > deadline:
                return len(missing)
            await asyncio.sleep(POLL_INTERVAL)

    async def close(self) -> None:
        self.stopping = True
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


# -- one run -------------------------------------------------------------------------------


def pool_ceiling(stack: Stack) -> int:
    """The idle connections the pools may keep: DATABASE_POOL_SIZE per process that has a pool
    (each API, the worker and its pool processes). A pool keeps what it opened at its busiest,
    so a count above the start is not a leak by itself; one above this ceiling, or a
    connection still busy once the load has stopped, is."""
    assert stack.worker.group is not None
    worker_processes = stack.worker.concurrency + 1
    pool_size = int(Settings.model_fields["database_pool_size"].default)
    return pool_size * (len(stack.apis) + worker_processes)


async def settle_connections(stack: Stack, allowed: int) -> dict[str, Any]:
    """Wait for the pools to take every connection back: none busy, at most `allowed`."""
    deadline = time.monotonic() + SETTLE_DEADLINE
    while True:
        state = await database_state(stack.database_url)
        busy = state["connections"] - state["by_state"].get("idle", 0)
        if (busy == 0 and state["connections"] <= allowed) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(POLL_INTERVAL)


def growth(start: int, end: int) -> float | None:
    return round((end - start) * 100 / start, 1) if start else None


async def soak(stack: Stack, *, duration: float, rate: float, concurrency: int,
               warmup: float) -> dict[str, Any]:  # fmt: skip
    recorder = Recorder()
    workload = Workload(stack, recorder, concurrency)
    async with AsyncExitStack() as resources:
        await workload.setup(resources)
        await workload.run(warmup, rate)
        warm_errors = recorder.error_count
        recorder.latencies.clear()  # the figures are of the measured run
        start = await snapshot(stack)
        began = time.monotonic()
        await workload.run(duration, rate)
        elapsed = time.monotonic() - began
        missing_notifications = await workload.settle_notifications()
        await workload.close()
    allowed = max(start["postgres"]["connections"], pool_ceiling(stack))
    settled = await settle_connections(stack, allowed)
    end = await snapshot(stack)
    end["postgres"] = settled
    rss_growth = {name: growth(kib, end["rss_kib"][name]) for name, kib in start["rss_kib"].items()}
    app_growth = {n: g for n, g in rss_growth.items() if n.startswith("api_") or n == "worker"}
    jobs_unfinished = [t for t, s in workload.jobs.items() if s not in TERMINAL_STATES]
    if missing_notifications:
        recorder.error("sse", "missing", f"{missing_notifications} job notifications not received")
    busy = settled["connections"] - settled["by_state"].get("idle", 0)
    requests = sum(len(v) for v in recorder.latencies.values())
    return {
        "duration_s": round(elapsed, 1),
        "rate_per_s": rate,
        "concurrency": concurrency,
        "warmup_s": warmup,
        "operations_behind_schedule": workload.behind,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1) if elapsed else None,
        "errors": recorder.error_count,
        "warmup_errors": warm_errors,
        "error_examples": recorder.examples,
        "kinds": recorder.summary(),
        "jobs": {
            "submitted": len(workload.jobs),
            "unfinished": len(jobs_unfinished),
            "states": _count(workload.jobs.values()),
            "notifications_received": len(workload.notified & set(workload.jobs)),
        },
        "start": start,
        "end": end,
        "rss_growth_percent": rss_growth,
        "redis_used_memory_growth_percent": growth(
            start["redis_used_memory"], end["redis_used_memory"]
        ),
        "goals": {
            "zero_errors": {
                "errors": recorder.error_count + warm_errors,
                "met": recorder.error_count + warm_errors == 0,
            },
            "memory_growth_under_10_percent": {
                "growth_percent": app_growth,
                "target": MEMORY_GOAL_PERCENT,
                "met": all(g is not None and g < MEMORY_GOAL_PERCENT for g in app_growth.values()),
            },
            "no_leaked_connections": {
                "start": start["postgres"]["connections"],
                "end": settled["connections"],
                "busy_at_end": busy,
                "pool_ceiling": allowed,
                "met": busy == 0 and settled["connections"] <= allowed,
            },
            "every_job_finished": {"unfinished": len(jobs_unfinished), "met": not jobs_unfinished},
        },
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[str(value)] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured")
    parser.add_argument("--rate", type=float, default=8.0, help="operations per second")
    parser.add_argument("--concurrency", type=int, default=16, help="operations in flight")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds before the start figures"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        with (
            PostgresServer() as postgres,
            RedisServer(persistent=True) as redis_server,
            soak_stack(workdir, postgres, redis_server) as stack,
        ):
            print(f"soak: {args.duration:.0f}s at {args.rate}/s", file=sys.stderr, flush=True)
            run = soak(stack, duration=args.duration, rate=args.rate,
                       concurrency=args.concurrency, warmup=args.warmup)  # fmt: skip
            report = asyncio.run(run)
    report["host"] = HOST
    print(json.dumps(report, indent=2))
    sys.exit(0 if all(goal["met"] for goal in report["goals"].values()) else 1)


if __name__ == "__main__":
    main()
