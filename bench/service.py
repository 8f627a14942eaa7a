"""The processes a load benchmark measures, on the harness shared with the tests
(tests.support.processes, tests.support.servers): the service (`app api`, as deployed), the
ceiling (bench/bare_app.py), a throwaway redis-server, and the database they share, migrated
and seeded once. Each server runs in its own process group, registered in bench.cpu's
OUR_GROUPS so its CPU counts as ours, and is stopped on the way out whatever happens.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, HOST, LOG_NOTABLE_LINES, ROOT, BenchError, log_tail, progress
from bench.cpu import OUR_GROUPS
from bench.pinning import NO_PINNING, Pinning
from bench.targets import FLOOR_ENDPOINTS, QUIET_SERVICE_ENDPOINTS
from tests.support.processes import GroupProcess, ProcessDied, free_port, http_ok
from tests.support.servers import RedisServer, ServerStartError, ServerUnavailable

BARE_APP = BENCH_DIR / "bare_app.py"
FLOOR_APP = BENCH_DIR / "floor_app.py"
SECRET_KEY = "bench-only-signing-key-not-a-secret-0123456789ab"  # 48 characters
# Limits out of reach, but still checked on every request as in production: without this,
# the default 600/minute per client address turns a run into 429s within a second.
NO_LIMIT = "100000000/minute"
RATE_LIMITS = ("RATE_LIMIT_DEFAULT", "RATE_LIMIT_LOGIN", "RATE_LIMIT_LOGIN_ACCOUNT",
               "RATE_LIMIT_REGISTER", "RATE_LIMIT_PASSWORD_RESET")  # fmt: skip
SEED_USERS = 50
SEED_ITEMS = 2000
SETUP_TIMEOUT_S = 600  # migrate, seed
READY_TIMEOUT_S = 60
READY_POLL_S = 0.1
STOP_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    """A server this run started: its process group (pid, CPU, stop) and where it listens."""

    name: str
    group: GroupProcess
    log: Path
    base_url: str


def scan_service_log(path: Path) -> dict[str, Any]:
    """The service logs JSON lines at INFO: count the access log, keep what is above INFO.

    A line that is not JSON (a traceback printed around the logger, a warning from Python
    itself) or whose level is above INFO deserves a look, and is kept.
    """
    lines = access = 0
    notable: list[str] = []
    if path.exists():
        with path.open(errors="replace") as log:
            for line in log:
                lines += 1
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    notable.append(line.rstrip("\n"))
                elif event.get("logger") == "app.access":
                    access += 1
                elif str(event.get("level", "")).lower() not in ("debug", "info"):
                    notable.append(line.rstrip("\n"))
    return {
        "lines": lines,
        "access_log_lines": access,
        "notable_count": len(notable),
        "notable": notable[:LOG_NOTABLE_LINES],
    }


def app_step(*args: str, env: dict[str, str], cwd: Path, log: Path) -> None:
    """`app <args>` (migrate, seed), which must succeed; its output goes to `log`."""
    progress("app " + " ".join(args))
    with log.open("ab") as sink:
        result = subprocess.run(
            uv_command("app", *args), env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, timeout=SETUP_TIMEOUT_S, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(log_tail(log))
        raise BenchError(f"app {' '.join(args)} exited with {result.returncode}:\n{tail}")


@contextlib.contextmanager
def serving(
    name: str, command: Sequence[str], *, port: int, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[Server]:
    """A server in its own process group, stopped on the way out whatever happens: SIGTERM
    to the group (uv and the Python under it), SIGKILL after STOP_TIMEOUT_S."""
    progress(f"starting {name} on port {port}")
    group = GroupProcess(command, env=env, cwd=cwd, stdout=log, name=name)
    OUR_GROUPS.add(group.pid)  # its own session: its pid is its process group
    try:
        yield Server(name, group, log, f"http://{HOST}:{port}")
    finally:
        progress(f"stopping {name}")
        group.stop(signal.SIGTERM, grace=STOP_TIMEOUT_S)
        OUR_GROUPS.discard(group.pid)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll `GET /health` until it answers 200; fail early if the process dies."""
    try:
        server.group.wait_until(
            lambda: http_ok(server.base_url + "/health"),
            timeout=timeout,
            interval=READY_POLL_S,
            what="GET /health",
        )
    except ProcessDied:
        tail = "\n".join(log_tail(server.log))
        code = server.group.returncode
        raise BenchError(f"{server.name} exited with {code} before it was ready:\n{tail}") from None
    except AssertionError:
        raise BenchError(f"{server.name} not ready after {timeout:.0f}s") from None


def uv_command(*args: str) -> list[str]:
    """Run in the project's environment from any directory, so no `.env` is picked up."""
    uv = shutil.which("uv")
    if uv is None:
        raise BenchError("uv not found on PATH")
    return [uv, "run", "--project", str(ROOT), *args]


def _without_service_settings(environ: dict[str, str]) -> dict[str, str]:
    """The environment minus anything the service would read as a setting (case-insensitive,
    as pydantic-settings reads them): a REDIS_URL or ACCESS_LOG in the caller's shell must not
    change what is measured."""
    from app.core.config import Settings  # the project's own list of settings

    names = {name.upper() for name in Settings.model_fields}
    names.add("PROMETHEUS_MULTIPROC_DIR")  # `app api` makes a fresh one when unset
    return {k: v for k, v in environ.items() if k.upper() not in names}


def service_env(data_dir: Path, database_url: str | None, redis_url: str | None) -> dict[str, str]:
    # Memory mode leaves REDIS_URL unset: an empty one is "no Redis" to the cache and the
    # limiter but a URL to the pub/sub hub, which then fails the startup.
    redis = {"REDIS_URL": redis_url} if redis_url else {}
    return {
        **_without_service_settings(dict(os.environ)),
        "ENVIRONMENT": "development",
        "DEBUG": "false",
        "APP_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url or "",  # empty: SQLite in APP_DATA_DIR
        **redis,
        "SECRET_KEY": SECRET_KEY,
        # Production's logging: JSON lines at INFO, so the access log is really written.
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "ACCESS_LOG": "true",  # `--no-access-log` overrides it
        **dict.fromkeys(RATE_LIMITS, NO_LIMIT),
    }


def prepare_database(workdir: Path, database_url: str | None) -> None:
    """Migrate and seed once: both modes run on the same data."""
    env = service_env(workdir / "data", database_url, None)
    setup_log = workdir / "setup.log"
    app_step("migrate", env=env, cwd=workdir, log=setup_log)
    app_step("seed", "--users", str(SEED_USERS), "--items", str(SEED_ITEMS), env=env,
             cwd=workdir, log=setup_log)  # fmt: skip


@contextlib.contextmanager
def running_service(
    name: str,
    workdir: Path,
    env: dict[str, str],
    *,
    access_log: bool,
    pinning: Pinning = NO_PINNING,
    workers: int = 1,
) -> Iterator[Server]:
    """`app api` on a free port: the service as deployed, one process unless `workers`."""
    port = free_port()
    command = uv_command("app", "api", "--host", HOST, "--port", str(port))
    if workers != 1:
        command += ["--workers", str(workers)]
    if not access_log:
        command.append("--no-access-log")
    command = pinning.server(command)
    log = workdir / f"{name.replace(' ', '-')}.log"
    with serving(name, command, port=port, env=env, cwd=workdir, log=log) as server:
        wait_ready(server)
        yield server


@contextlib.contextmanager
def running_ceiling(workdir: Path, pinning: Pinning = NO_PINNING) -> Iterator[Server]:
    """bench/bare_app.py under the uvicorn options `app api` uses (see bare_app.main)."""
    port = free_port()
    command = pinning.server(
        uv_command("python", str(BARE_APP), "--host", HOST, "--port", str(port))
    )
    log = workdir / "bare.log"
    with serving("ceiling", command, port=port, env=dict(os.environ), cwd=workdir, log=log) as s:
        wait_ready(s)
        yield s


@contextlib.contextmanager
def running_floor(
    name: str, workdir: Path, env: dict[str, str], pinning: Pinning = NO_PINNING
) -> Iterator[Server]:
    """bench/floor_app.py on the service's environment: same database, Redis and signing key."""
    port = free_port()
    command = pinning.server(
        uv_command("python", str(FLOOR_APP), "--host", HOST, "--port", str(port))
    )
    log = workdir / f"{name.replace(' ', '-')}.log"
    with serving(name, command, port=port, env=env, cwd=workdir, log=log) as server:
        wait_ready(server)
        yield server


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    """A throwaway redis-server on loopback, nothing persisted; yields its URL."""
    server = RedisServer()
    progress("starting redis")
    try:
        server.start()
    except ServerUnavailable as exc:
        raise BenchError(f"{exc} (Debian/Ubuntu: apt-get install redis)") from None
    except ServerStartError as exc:
        raise BenchError(str(exc)) from None
    pid = server.pid
    OUR_GROUPS.add(pid)
    try:
        yield server.url
    finally:
        progress("stopping redis")
        server.stop()
        OUR_GROUPS.discard(pid)


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """One mode's servers: the service as deployed, and (if asked for) one without access log."""

    mode: str
    redis_url: str | None
    full: Server
    quiet: Server | None
    floor: Server | None = None

    def for_endpoint(self, name: str) -> Server:
        if name in QUIET_SERVICE_ENDPOINTS:
            if self.quiet is None:
                raise BenchError(f"{name} needs the --no-access-log service")
            return self.quiet
        return self.full


@contextlib.contextmanager
def running_mode(
    mode: str,
    workdir: Path,
    database_url: str | None,
    only: Sequence[str],
    pinning: Pinning = NO_PINNING,
) -> Iterator[Services]:
    """Redis (in redis mode), then the services; stopped in the reverse order."""
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(running_redis()) if mode == "redis" else None
        env = service_env(workdir / "data", database_url, redis_url)
        full = stack.enter_context(running_service(f"service {mode}", workdir, env,
                                                   access_log=True, pinning=pinning))  # fmt: skip
        quiet = None
        if QUIET_SERVICE_ENDPOINTS & set(only):
            quiet = stack.enter_context(
                running_service(
                    f"service {mode} no-access-log",
                    workdir,
                    env,
                    access_log=False,
                    pinning=pinning,
                )
            )
        floor = None
        if FLOOR_ENDPOINTS & set(only):
            floor = stack.enter_context(running_floor(f"floor {mode}", workdir, env, pinning))
        yield Services(mode, redis_url, full, quiet, floor)
