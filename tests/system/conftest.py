"""Real API processes for system tests: the service as it is deployed, not as it is imported.

Each process is started with the `app` command (`app api --port P [--workers N]`) in its own
environment, polled on `GET /health` until it answers, and stopped with SIGINT (its process
group is killed if it has not exited after a deadline). Its stdout and stderr go to files;
when a test fails, the tail of every API process still running is attached to the report.

Every process shares one migrated PostgreSQL database per test session (created here from
the session's `postgres_server`), and a Redis logical database chosen by the test.
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
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from app.core.config import Settings
from tests.conftest import TEST_SECRET
from tests.servers import PostgresServer, RedisServer, free_port, tail

APP = str(Path(sys.executable).parent / "app")
HOST = "127.0.0.1"
START_DEADLINE_SECONDS = 60.0  # two cold Python processes on a loaded 2-core CI machine
STOP_DEADLINE_SECONDS = 20.0
PORT_ATTEMPTS = 3
GENEROUS_LIMIT = "100000/minute"
PASSWORD = "System-password-1"

# Processes started and not yet stopped: their output is attached to a failing test's report.
_RUNNING: list[ApiProcess] = []


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
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exit code {self.proc.returncode}"
        return (
            f"API process {self.name!r} (pid {self.proc.pid}, port {self.port}, {state})\n"
            f"--- stdout ({self.stdout}) ---\n{tail(self.stdout)}\n"
            f"--- stderr ({self.stderr}) ---\n{tail(self.stderr)}"
        )

    def wait_ready(self, deadline: float) -> bool:
        """Poll GET /health; False if the process died because its port was taken."""
        while True:
            if self.proc.poll() is not None:
                _RUNNING.remove(self)  # reported here, not again at teardown
                if "address already in use" in tail(self.stderr).lower():
                    return False
                raise AssertionError(f"API process died while starting\n{self.describe()}")
            if self._all_workers_started():
                try:
                    if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"API process not ready after {START_DEADLINE_SECONDS:.0f}s\n{self.describe()}"
                )
            time.sleep(0.05)

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
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                # The leader is not reaped yet, so its group id is still ours.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(
                    f"API process ignored SIGINT for {STOP_DEADLINE_SECONDS:.0f}s and was "
                    f"killed\n{self.describe()}"
                ) from None
        if self.proc.returncode != 0:
            raise AssertionError(f"API process did not exit cleanly\n{self.describe()}")


def _spawn(spec: ApiSpec, log_dir: Path, attempt: int) -> ApiProcess:
    port = free_port()
    stdout = log_dir / f"{spec.name}.{attempt}.stdout.log"
    stderr = log_dir / f"{spec.name}.{attempt}.stderr.log"
    command = [APP, "api", "--host", HOST, "--port", str(port), "--workers", str(spec.workers)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            command,
            env=spec.env,
            cwd=log_dir,  # no stray .env from the repository
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # a group of its own: its workers can be killed with it
        )
    process = ApiProcess(spec, port, proc, stdout, stderr)
    _RUNNING.append(process)
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
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        for spec in specs:
            attempt = 1
            while not pending[spec.name].wait_ready(deadline):
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
            if process not in _RUNNING:
                continue  # replaced after a port clash, or stopped already
            try:
                process.stop()
            except AssertionError as exc:
                problems.append(str(exc))
        if problems:
            raise AssertionError("\n\n".join(problems))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in _RUNNING:
            report.sections.append((f"API process {process.name}", process.describe()))
    return report


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def system_database(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A fresh PostgreSQL database, migrated by `app migrate` as an operator would."""
    name = f"system_{secrets.token_hex(4)}"
    # The documented form; the app picks the asyncpg driver itself.
    url = postgres_server.create_database(name).replace("postgresql+asyncpg://", "postgresql://")
    data_dir = tmp_path_factory.mktemp("system-migrate")
    result = subprocess.run(
        [APP, "migrate"],
        env=api_env(data_dir, database_url=url),
        cwd=data_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"app migrate failed:\n{result.stdout}\n{result.stderr}"
    return url


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ApiFleet]:
    """API processes that live for one test."""
    processes = ApiFleet(tmp_path / "api-logs")
    try:
        yield processes
    finally:
        processes.stop()


# -- client helpers ------------------------------------------------------------------------


def unique_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(client: httpx.Client, username: str) -> None:
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD,
            "password_confirm": PASSWORD}  # fmt: skip
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text


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


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == response.status_code, body
    return str(body["error"]["code"])


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
    """Repeat `request` until `done` says yes, for at most `timeout` seconds."""
    started = time.monotonic()
    seen: list[int] = []
    while True:
        response = request()
        seen.append(response.status_code)
        elapsed = time.monotonic() - started
        if done(response):
            return Polled(response, len(seen), elapsed, seen)
        if elapsed > timeout:
            raise AssertionError(
                f"{what}: not within {timeout}s ({len(seen)} attempts, statuses {seen[-10:]}); "
                f"last answer {response.status_code} {response.text[:500]}"
            )
        time.sleep(interval)


def wait_for_window_headroom(period: float, headroom: float) -> None:
    """Fixed rate-limit windows are aligned to the clock (`window = now // period`): a count
    that straddles a boundary starts over. Wait for the next window when this one has less
    than `headroom` seconds left: a wait for a clock condition, not for work to finish."""
    left = period - time.time() % period
    if left < headroom:
        time.sleep(left + 0.05)
