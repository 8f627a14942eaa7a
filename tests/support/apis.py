"""Real API processes for system tests: the service as it is deployed, not as it is imported.

Each process is `app api --port P [--workers N]` in its own environment and process group
(tests.support.processes.GroupProcess), polled on `GET /health` until it answers, and stopped
with SIGINT (its group is killed if it has not exited after a deadline). Its stdout and stderr
go to files; `RUNNING` lists the processes not yet stopped, whose tails tests/system/conftest.py
attaches to a failing test's report. Client helpers (register, log in, poll) are here too.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from app.core.config import Settings
from tests.support.assertions import error_code
from tests.support.processes import HOST, GroupProcess, ProcessDied, free_port, http_ok, tail
from tests.support.servers import RedisServer
from tests.support.settings import GENEROUS_LIMIT, TEST_SECRET
from tests.support.waiting import eventually

__all__ = [
    "APP",
    "RUNNING",
    "STOP_DEADLINE_SECONDS",
    "ApiFleet",
    "ApiProcess",
    "ApiSpec",
    "Polled",
    "api_env",
    "bearer",
    "error_code",
    "fresh_redis_db",
    "login",
    "login_tokens",
    "poll_until",
    "register",
    "session_id_of",
    "unique_name",
    "wait_for_window_headroom",
]

APP = str(Path(sys.executable).parent / "app")
START_DEADLINE_SECONDS = 60.0  # two cold Python processes on a loaded 2-core CI machine
STOP_DEADLINE_SECONDS = 20.0
PORT_ATTEMPTS = 3
PASSWORD = "System-password-1"

# Processes started and not yet stopped: their output is attached to a failing test's report.
RUNNING: list[ApiProcess] = []


# -- environment ---------------------------------------------------------------------------


def api_env(
    data_dir: Path, *, database_url: str, redis_url: str | None = None, **overrides: str
) -> dict[str, str]:
    """The environment of an `app` process: ours, minus anything that configures the app.

    Limits are generous unless overridden: each test sets the one it is about.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        SECRET_KEY=TEST_SECRET,
        APP_DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        RATE_LIMIT_DEFAULT=GENEROUS_LIMIT,
        RATE_LIMIT_LOGIN=GENEROUS_LIMIT,
        RATE_LIMIT_LOGIN_ACCOUNT=GENEROUS_LIMIT,
        RATE_LIMIT_REGISTER=GENEROUS_LIMIT,
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(overrides)
    return env


def fresh_redis_db(server: RedisServer, db: int) -> str:
    """The URL of an emptied logical database of `server`: one per group of processes."""
    url = f"redis://{HOST}:{server.port}/{db}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


# -- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiSpec:
    name: str
    env: dict[str, str]
    workers: int = 1


@dataclass
class ApiProcess:
    spec: ApiSpec
    port: int
    group: GroupProcess
    stdout: Path
    stderr: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.group.process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def describe(self) -> str:
        state = "running" if self.group.alive() else f"exit code {self.group.returncode}"
        return (
            f"API process {self.name!r} (pid {self.group.pid}, port {self.port}, {state})\n"
            f"--- stdout ({self.stdout}) ---\n{tail(self.stdout)}\n"
            f"--- stderr ({self.stderr}) ---\n{tail(self.stderr)}"
        )

    def wait_ready(self, timeout: float) -> bool:
        """Wait for GET /health; False if the process died because its port was taken."""
        try:
            self.group.wait_until(
                lambda: self._all_workers_started() and http_ok(f"{self.url}/health"),
                timeout=timeout,
                what="GET /health",
            )
        except ProcessDied:
            RUNNING.remove(self)  # reported here, not again at teardown
            if "address already in use" in tail(self.stderr).lower():
                return False
            raise AssertionError(f"API process died while starting\n{self.describe()}") from None
        return True

    def _all_workers_started(self) -> bool:
        """With several workers, one answering /health says nothing of the others: wait
        until each has logged uvicorn's end of startup."""
        if self.spec.workers == 1:
            return True
        try:
            log = self.stderr.read_text(errors="replace")
        except OSError:
            return False
        return log.count("Application startup complete") >= self.spec.workers

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful stop), then SIGKILL to the whole group after a deadline."""
        if self in RUNNING:
            RUNNING.remove(self)
        if not self.group.stop(signal.SIGINT, grace=STOP_DEADLINE_SECONDS):
            raise AssertionError(
                f"API process ignored SIGINT for {STOP_DEADLINE_SECONDS:.0f}s and was "
                f"killed\n{self.describe()}"
            )
        if self.group.returncode != 0:
            raise AssertionError(f"API process did not exit cleanly\n{self.describe()}")


def _spawn(spec: ApiSpec, log_dir: Path, attempt: int) -> ApiProcess:
    port = free_port()
    stdout = log_dir / f"{spec.name}.{attempt}.stdout.log"
    stderr = log_dir / f"{spec.name}.{attempt}.stderr.log"
    command = [APP, "api", "--host", HOST, "--port", str(port), "--workers", str(spec.workers)]
    group = GroupProcess(
        command,
        env=spec.env,
        cwd=log_dir,  # no stray .env from the repository
        stdout=stdout,
        stderr=stderr,
        name=f"API process {spec.name!r}",
    )
    process = ApiProcess(spec, port, group, stdout, stderr)
    RUNNING.append(process)
    return process


class ApiFleet:
    """Starts API processes (several at once, ready together) and stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ApiProcess] = []

    def start(self, *specs: ApiSpec) -> list[ApiProcess]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pending = {spec.name: _spawn(spec, self.log_dir, 1) for spec in specs}
        self.processes += pending.values()
        started = time.monotonic()
        for spec in specs:
            attempt = 1
            # One deadline for the fleet: they start in parallel.
            while not pending[spec.name].wait_ready(
                START_DEADLINE_SECONDS - (time.monotonic() - started)
            ):
                # It exited: another process took the port between free_port() and bind.
                if attempt == PORT_ATTEMPTS:
                    raise AssertionError(f"no free port\n{pending[spec.name].describe()}")
                attempt += 1
                pending[spec.name] = _spawn(spec, self.log_dir, attempt)
                self.processes.append(pending[spec.name])
        return [pending[spec.name] for spec in specs]

    def stop(self) -> None:
        problems: list[str] = []
        for process in self.processes:
            if process not in RUNNING:
                continue  # replaced after a port clash, or stopped already
            try:
                process.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError("\n\n".join(problems))


# -- client helpers ------------------------------------------------------------------------


def unique_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(client: httpx.Client, username: str) -> None:
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD,
            "password_confirm": PASSWORD}  # fmt: skip
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 202, response.text


def login(client: httpx.Client, username: str) -> httpx.Response:
    return client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})


def login_tokens(client: httpx.Client, username: str) -> dict[str, str]:
    response = login(client, username)
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


def session_id_of(access_token: str) -> str:
    """The `sid` claim, read without verifying: the test only needs to know which session."""
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sid"])


@dataclass
class Polled:
    response: httpx.Response
    attempts: int
    elapsed: float
    seen: list[int] = field(default_factory=list)


def poll_until(
    request: Callable[[], httpx.Response],
    done: Callable[[httpx.Response], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> Polled:
    """Repeat `request` until `done` says yes, for at most `timeout` seconds; the answer with
    how many attempts it took and the statuses seen on the way."""
    started = time.monotonic()
    seen: list[int] = []

    def attempt() -> httpx.Response | None:
        response = request()
        seen.append(response.status_code)
        return response if done(response) else None

    try:
        response = eventually(attempt, timeout=timeout, what=what, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses {seen[-10:]}") from None
    return Polled(response, len(seen), time.monotonic() - started, seen)


def wait_for_window_headroom(period: float, headroom: float) -> None:
    """Fixed rate-limit windows are aligned to the clock (`window = now // period`): a count
    that straddles a boundary starts over. Wait for the next window when this one has less
    than `headroom` seconds left: a wait for a clock condition, not for work to finish."""
    left = period - time.time() % period
    if left < headroom:
        time.sleep(left + 0.05)


def ws_url(process: ApiProcess, path: str) -> str:
    return process.url.replace("http://", "ws://", 1) + path


def account(process: ApiProcess) -> tuple[int, str]:
    """A new user's id and access token."""
    name = unique_name("rt")
    with httpx.Client(base_url=process.url, timeout=15) as client:
        register(client, name)
        token = login_tokens(client, name)["access_token"]
        me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        return int(me.json()["id"]), token
