"""Load benchmark: requests/sec and latency per endpoint, as ratios to a ceiling.

What one run measures, over loopback only, with wrk (2 threads, bounded duration/connections):

* the ceiling: `GET /health` of a bare FastAPI app (bench/bare_app.py) served with the options
  `app api` passes to uvicorn (one process, httptools, uvloop, no uvicorn access log or server
  header, no proxy headers);
* the service, once per mode: "memory" (embedded: rate limits, cache and auth snapshots in
  process memory) and "redis" (REDIS_URL set, against a throwaway redis-server this script
  starts), on one fresh database (SQLite in a temp dir, or --database-url) seeded with 50 users
  and 2000 items: health through the whole middleware stack with the access log on (the
  production configuration) and again under `--no-access-log`, one item anonymous and with a
  token (both cache hits after the first request), /users/me, a page of items, item creation
  and login (Argon2, so on fewer connections). Rate limits stay on, raised out of reach;
* a login flood: light `GET /health` traffic while logins run flat out, next to the same light
  traffic alone. It shows whether password hashing starves the event loop.

Each mode measures the ceiling first and again after its endpoints (`ceiling_drift`: how much
the machine changed meanwhile), and every wrk run records the 1-minute load average and the CPU
the rest of the machine used during it (`other_cpu_cores`), so busy-machine figures say so.

Why ratios: absolute figures depend on the machine and on whatever else runs on it, and shared
runners and laptops are noisy. The ceiling is measured in the same run, on the same machine,
under the same noise, so `ratio_to_ceiling` (endpoint rps / ceiling rps) is the figure to
compare between runs and machines; the absolute numbers are context.

A benchmark of errors is worthless: each endpoint is requested once first and must answer its
expected status (wrk itself counts 3xx as success), then wrk's non-2xx/3xx count and socket
errors are reported per endpoint and listed under "problems" (exit status 1 if any). Targets
(`TARGETS`) are reported as met or not; missing one does not change the exit status.

    uv run python bench/run.py [--duration 5] [--connections 32] [--mode memory|redis|both]
                               [--only health,item_read_auth,login]

JSON goes to stdout and bench/results/latest.json; progress goes to stderr.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlencode

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "request.lua"
BARE_APP = BENCH_DIR / "bare_app.py"
RESULTS_FILE = BENCH_DIR / "results" / "latest.json"

HOST = "127.0.0.1"
SECRET_KEY = "bench-only-signing-key-not-a-secret-0123456789ab"  # 48 characters
DEMO_USER = "demo0"
DEMO_PASSWORD = "Demo-password-1"  # what `app seed` gives every demo user
# Limits out of reach, but still checked on every request as in production: without this,
# the default 600/minute per client address turns a run into 429s within a second.
NO_LIMIT = "100000000/minute"
RATE_LIMITS = ("RATE_LIMIT_DEFAULT", "RATE_LIMIT_LOGIN", "RATE_LIMIT_LOGIN_ACCOUNT",
               "RATE_LIMIT_REGISTER", "RATE_LIMIT_PASSWORD_RESET")  # fmt: skip
SEED_USERS = 50
SEED_ITEMS = 2000

THREADS = 2
LOGIN_MAX_CONNECTIONS = 8  # Argon2 takes ~100-150 ms of CPU per login: more only queues
PROBE_CONNECTIONS = 4  # the light /health traffic beside the login flood
WRK_TIMEOUT = "5s"  # slower than this counts as a socket timeout, not as latency
WRK_GRACE_S = 30  # how long past --duration a wrk may take before it is killed
SETUP_TIMEOUT_S = 600  # migrate, seed
READY_TIMEOUT_S = 60
READY_POLL_S = 0.1
STOP_TIMEOUT_S = 10
LOG_NOTABLE_LINES = 40  # log lines above INFO (or not JSON) kept in the report
ACCESS_LOG_WAIT_S = 2.0  # how long an access log line may take to reach the log file

FORM = "application/x-www-form-urlencoded"
ITEM_BODY = json.dumps({"title": "bench", "price": "9.99", "currency": "USD"})
LOGIN_BODY = urlencode({"username": DEMO_USER, "password": DEMO_PASSWORD})

ENDPOINTS = (
    "health",  # through every middleware, access log on: the production configuration
    "health_no_access_log",  # the same on a second service started with --no-access-log
    "item_read",
    "item_read_auth",  # the same item with a token: an item and a token snapshot cache hit
    "users_me",
    "items_list",
    "item_create",
    "login",
)
QUIET_SERVICE_ENDPOINTS = frozenset({"health_no_access_log"})
LOGIN_FLOOD = "login_flood"
CHOICES = (*ENDPOINTS, LOGIN_FLOOD)
MODES = ("memory", "redis")
PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis")  # versions noted


@dataclasses.dataclass(frozen=True, slots=True)
class Goal:
    """A figure the service is held to: an endpoint's requests/sec over the ceiling's."""

    endpoint: str
    ratio: float
    what: str


# From the issue; tests assert them, the bench reports them (one entry per mode).
TARGETS = {
    "health_full_stack": Goal("health", 0.85, "GET /health, all middleware, access log on"),
    "item_read_auth_cache_hit": Goal(
        "item_read_auth", 0.5, "GET /api/v1/items/{id} with a token, item and token cached"
    ),
}


class BenchError(Exception):
    """The run cannot go on; the message says why."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- What to request ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One request, repeated by wrk, and the status a correct answer has."""

    path: str
    method: str = "GET"
    expected_status: int = 200
    body: str | None = None
    content_type: str | None = None
    authorized: bool = False
    max_connections: int | None = None


HEALTH = Target("/health")
LOGIN = Target(
    "/api/v1/auth/token",
    method="POST",
    body=LOGIN_BODY,
    content_type=FORM,
    max_connections=LOGIN_MAX_CONNECTIONS,
)


def service_targets(item_id: int) -> dict[str, Target]:
    targets = {
        "health": HEALTH,
        "health_no_access_log": HEALTH,
        "item_read": Target(f"/api/v1/items/{item_id}"),
        "item_read_auth": Target(f"/api/v1/items/{item_id}", authorized=True),
        "users_me": Target("/api/v1/users/me", authorized=True),
        "items_list": Target("/api/v1/items/?per_page=20"),
        "item_create": Target(
            "/api/v1/items/",
            method="POST",
            expected_status=201,
            body=ITEM_BODY,
            content_type="application/json",
            authorized=True,
        ),
        "login": LOGIN,
    }
    assert tuple(targets) == ENDPOINTS
    return targets


def request_headers(target: Target, token: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if target.content_type:
        headers["Content-Type"] = target.content_type
    if target.authorized:
        if token is None:
            raise BenchError(f"{target.path} needs a token")
        headers["Authorization"] = f"Bearer {token}"
    return headers


# --- wrk -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class WrkResult:
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int  # wrk's "Non-2xx or 3xx responses"
    socket_errors: dict[str, int]
    loadavg_1m: float | None = None  # when wrk started; our own load counts in it too
    other_cpu_cores: float | None = None  # CPU the rest of the machine took meanwhile

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def problems(self, name: str) -> list[str]:
        found = []
        if self.non_2xx:
            found.append(f"{name}: {self.non_2xx} non-2xx/3xx responses of {self.requests}")
        if any(self.socket_errors.values()):
            found.append(f"{name}: socket errors {self.socket_errors}")
        if not self.requests:
            found.append(f"{name}: no request completed")
        return found


_MS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def to_ms(text: str) -> float:
    """wrk's "812.00us", "3.21ms", "1.02s" (also "m", "h") in milliseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    if match is None:
        raise BenchError(f"unexpected wrk duration {text!r}")
    return round(float(match[1]) * _MS_PER_UNIT[match[2]], 3)


def _field(pattern: str, output: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {pattern!r} in wrk output:\n{output}")
    return match[1]


def parse_wrk(output: str, connections: int) -> WrkResult:
    """The figures of one `wrk --latency` report."""
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = _SOCKET_ERRORS.search(output)
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    return WrkResult(
        connections=connections,
        requests=int(_field(r"^\s*(\d+) requests in", output)),
        rps=round(float(_field(r"^Requests/sec:\s+([\d.]+)", output)), 1),
        p50_ms=to_ms(_field(r"^\s+50(?:\.000)?%\s+(\S+)", output)),
        p99_ms=to_ms(_field(r"^\s+99(?:\.000)?%\s+(\S+)", output)),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts, strict=True)),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """How hard to push: the same for every run unless a target caps its connections."""

    duration: int
    connections: int

    def connections_for(self, target: Target) -> int:
        return min(self.connections, target.max_connections or self.connections)


@dataclasses.dataclass(frozen=True, slots=True)
class WrkRun:
    process: "subprocess.Popen[str]"
    connections: int
    deadline: float


def start_wrk(
    base_url: str, target: Target, *, duration: int, connections: int, token: str | None
) -> WrkRun:
    command = [
        "wrk",
        f"-t{min(THREADS, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        base_url + target.path,
    ]
    headers = request_headers(target, token)
    env = {
        **os.environ,
        "BENCH_METHOD": target.method,
        "BENCH_BODY": target.body or "",
        "BENCH_CONTENT_TYPE": headers.get("Content-Type", ""),
        "BENCH_AUTHORIZATION": headers.get("Authorization", ""),
    }
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return WrkRun(process, connections, time.monotonic() + duration + WRK_GRACE_S)


def finish_wrk(run: WrkRun) -> WrkResult:
    try:
        stdout, stderr = run.process.communicate(timeout=max(0.0, run.deadline - time.monotonic()))
    except BaseException:
        run.process.kill()
        run.process.wait()
        raise
    if run.process.returncode != 0:
        raise BenchError(f"wrk exited with {run.process.returncode}: {stderr.strip()}")
    return parse_wrk(stdout, run.connections)


def run_wrk(label: str, base_url: str, target: Target, load: Load, token: str | None) -> WrkResult:
    connections = load.connections_for(target)
    progress(f"{label}: {target.method} {target.path}, {connections} connections, {load.duration}s")
    before = CpuSnapshot.take()
    result = finish_wrk(
        start_wrk(base_url, target, duration=load.duration, connections=connections, token=token)
    )
    return before.annotate(result)


# --- How busy the machine was ------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Process groups of the servers this run started (each has its own, see `serving`); with our
# own group and our reaped children (wrk), that is "us". Everything else is "the machine".
OUR_GROUPS: set[int] = set()


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with Path("/proc/stat").open() as stat:
        fields = [int(n) for n in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _our_cpu_seconds() -> float:
    groups = OUR_GROUPS | {os.getpgrp()}
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
        if int(fields[2]) in groups:  # pgrp, field 5
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
    return ticks / CLOCK_TICKS + reaped.ru_utime + reaped.ru_stime


@dataclasses.dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Enough to tell, after a run, how much CPU other work on the machine took during it."""

    wall: float
    busy: float | None
    ours: float | None
    loadavg_1m: float

    @classmethod
    def take(cls) -> "CpuSnapshot":
        busy: float | None = None
        ours: float | None = None
        with contextlib.suppress(OSError, ValueError, IndexError):  # no /proc: not Linux
            busy, ours = _busy_cpu_seconds(), _our_cpu_seconds()
        return cls(time.monotonic(), busy, ours, round(os.getloadavg()[0], 2))

    def other_cores(self) -> float | None:
        """Cores' worth of CPU used since this snapshot by processes that aren't ours."""
        now = CpuSnapshot.take()
        if (
            self.busy is None or self.ours is None or now.busy is None or now.ours is None
            or now.wall <= self.wall
        ):  # fmt: skip
            return None
        other = (now.busy - self.busy) - (now.ours - self.ours)
        return round(max(0.0, other) / (now.wall - self.wall), 2)

    def annotate(self, result: WrkResult) -> WrkResult:
        return dataclasses.replace(
            result, loadavg_1m=self.loadavg_1m, other_cpu_cores=self.other_cores()
        )


# --- Processes -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    name: str
    process: "subprocess.Popen[bytes]"
    log: Path
    base_url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_NOTABLE_LINES) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


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


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a whole process group (uv and the Python under it); False if it is gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_group(process: "subprocess.Popen[bytes]", timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    while _signal_group(process.pid, 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a deadline."""
    _signal_group(process.pid, signal.SIGTERM)
    if not _wait_group(process, STOP_TIMEOUT_S):
        _signal_group(process.pid, signal.SIGKILL)
        _wait_group(process, STOP_TIMEOUT_S)


@contextlib.contextmanager
def serving(
    name: str, command: Sequence[str], *, port: int, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[Server]:
    """A server in its own process group, stopped on the way out whatever happens."""
    progress(f"starting {name} on port {port}")
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    OUR_GROUPS.add(process.pid)  # start_new_session: its pid is its process group
    try:
        yield Server(name, process, log, f"http://{HOST}:{port}")
    finally:
        progress(f"stopping {name}")
        stop(process)
        OUR_GROUPS.discard(process.pid)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll `GET /health` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                tail = "\n".join(log_tail(server.log))
                raise BenchError(f"{server.name} exited with {code} before it was ready:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(server.base_url + "/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name} not ready after {timeout:.0f}s")
            time.sleep(READY_POLL_S)


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
    name: str, workdir: Path, env: dict[str, str], *, access_log: bool
) -> Iterator[Server]:
    """`app api` on a free port: the service as deployed, one process."""
    port = free_port()
    command = uv_command("app", "api", "--host", HOST, "--port", str(port))
    if not access_log:
        command.append("--no-access-log")
    log = workdir / f"{name.replace(' ', '-')}.log"
    with serving(name, command, port=port, env=env, cwd=workdir, log=log) as server:
        wait_ready(server)
        yield server


@contextlib.contextmanager
def running_ceiling(workdir: Path) -> Iterator[Server]:
    """bench/bare_app.py under the uvicorn options `app api` uses (see bare_app.main)."""
    port = free_port()
    command = uv_command("python", str(BARE_APP), "--host", HOST, "--port", str(port))
    log = workdir / "bare.log"
    with serving("ceiling", command, port=port, env=dict(os.environ), cwd=workdir, log=log) as s:
        wait_ready(s)
        yield s


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on loopback, nothing persisted; yields its URL."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise BenchError("redis-server not found on PATH (Debian/Ubuntu: apt-get install redis)")
    port = free_port()
    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    command = [redis_server, "--port", str(port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--dir", str(data)]  # fmt: skip
    log = workdir / "redis.log"
    with serving("redis", command, port=port, env=dict(os.environ), cwd=workdir, log=log) as s:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not redis_ping(port):
            code = s.process.poll()
            if code is not None:
                tail = "\n".join(log_tail(log))
                raise BenchError(f"redis-server exited with {code} before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server not answering PING after {READY_TIMEOUT_S}s")
            time.sleep(READY_POLL_S)
        yield f"redis://{HOST}:{port}/0"


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """One mode's servers: the service as deployed, and (if asked for) one without access log."""

    mode: str
    redis_url: str | None
    full: Server
    quiet: Server | None

    def for_endpoint(self, name: str) -> Server:
        if name in QUIET_SERVICE_ENDPOINTS:
            if self.quiet is None:
                raise BenchError(f"{name} needs the --no-access-log service")
            return self.quiet
        return self.full


@contextlib.contextmanager
def running_mode(
    mode: str, workdir: Path, database_url: str | None, only: Sequence[str]
) -> Iterator[Services]:
    """Redis (in redis mode), then the services; stopped in the reverse order."""
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(running_redis(workdir)) if mode == "redis" else None
        env = service_env(workdir / "data", database_url, redis_url)
        full = stack.enter_context(running_service(f"service {mode}", workdir, env,
                                                   access_log=True))  # fmt: skip
        quiet = None
        if QUIET_SERVICE_ENDPOINTS & set(only):
            quiet = stack.enter_context(
                running_service(f"service {mode} no-access-log", workdir, env, access_log=False)
            )
        yield Services(mode, redis_url, full, quiet)


# --- Preparing the requests ----------------------------------------------------------------


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise BenchError(
            f"{what}: expected {status}, got {response.status_code}: {response.text[:500]}"
        )


def get_token(client: httpx.Client) -> str:
    response = client.post(
        "/api/v1/auth/token", data={"username": DEMO_USER, "password": DEMO_PASSWORD}
    )
    _expect(response, 200, "login")
    return str(response.json()["access_token"])


def get_item_id(client: httpx.Client) -> int:
    response = client.get("/api/v1/items/", params={"per_page": 1})
    _expect(response, 200, "item listing")
    items = response.json()["items"]
    if not items:
        raise BenchError("the seeded database has no items")
    return int(items[0]["id"])


def preflight(client: httpx.Client, name: str, target: Target, token: str) -> None:
    """One request by hand: wrk would count a 3xx (or a 200 where 201 is due) as success."""
    response = client.request(
        target.method,
        target.path,
        content=target.body,
        headers=request_headers(target, token),
    )
    _expect(response, target.expected_status, f"{name} ({target.method} {target.path})")


# --- The run -------------------------------------------------------------------------------


def with_ratio(result: WrkResult, ceiling: WrkResult) -> dict[str, Any]:
    ratio = result.rps / ceiling.rps if ceiling.rps else None
    return {**result.as_dict(), "ratio_to_ceiling": round(ratio, 4) if ratio else None}


@dataclasses.dataclass(frozen=True, slots=True)
class Flood:
    health_alone: WrkResult
    health_during_login_flood: WrkResult
    login: WrkResult

    def runs(self) -> dict[str, WrkResult]:
        return {
            "health_alone": self.health_alone,
            "health_during_login_flood": self.health_during_login_flood,
            "login": self.login,
        }

    def as_dict(self) -> dict[str, Any]:
        alone, during = self.health_alone, self.health_during_login_flood
        ratio = round(during.p99_ms / alone.p99_ms, 2) if alone.p99_ms else None
        return {**{k: r.as_dict() for k, r in self.runs().items()}, "health_p99_ratio": ratio}

    def problems(self) -> list[str]:
        return [p for k, r in self.runs().items() for p in r.problems(f"{LOGIN_FLOOD}.{k}")]


def login_flood(base_url: str, load: Load, token: str) -> Flood:
    """Light /health traffic alone, then again while wrk floods the login endpoint.

    The flood starts first and runs one second longer, so it covers the whole probe.
    """
    probe = dataclasses.replace(load, connections=PROBE_CONNECTIONS)
    alone = run_wrk("health alone", base_url, HEALTH, probe, token)
    connections = load.connections_for(LOGIN)
    progress(f"login flood on {connections} connections, /health probe beside it")
    flood_started = CpuSnapshot.take()
    flood = start_wrk(
        base_url, LOGIN, duration=load.duration + 1, connections=connections, token=token
    )
    try:
        probe_started = CpuSnapshot.take()
        during = finish_wrk(
            start_wrk(
                base_url, HEALTH, duration=load.duration, connections=PROBE_CONNECTIONS,
                token=token,
            )
        )  # fmt: skip
        during = probe_started.annotate(during)
    except BaseException:
        flood.process.kill()
        flood.process.wait()
        raise
    return Flood(alone, during, flood_started.annotate(finish_wrk(flood)))


def check_access_log_flag(services: Services, client: httpx.Client, path: str) -> dict[str, Any]:
    """`--no-access-log` is what the second health figure is about: does it turn the log off?

    One request to a route the access log does not skip, then count the lines it wrote.
    """
    assert services.quiet is not None
    before = scan_service_log(services.quiet.log)["access_log_lines"]
    _expect(client.get(path), 200, f"GET {path} on the --no-access-log service")
    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    written = 0
    while time.monotonic() < deadline and not written:
        time.sleep(0.1)
        written = scan_service_log(services.quiet.log)["access_log_lines"] - before
    return {"request": f"GET {path}", "access_log_lines_written": written, "effective": not written}


def benchmark_mode(
    ceiling_server: Server, services: Services, load: Load, only: Sequence[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """One mode's figures, its problems (non-2xx, socket errors) and its warnings."""
    mode = services.mode
    started = CpuSnapshot.take()
    ceiling = run_wrk(f"{mode}: ceiling", ceiling_server.base_url, HEALTH, load, None)
    problems = ceiling.problems(f"{mode}.ceiling")
    warnings: list[str] = []
    endpoints: dict[str, Any] = {}
    names = [n for n in ENDPOINTS if n in only]
    with contextlib.ExitStack() as stack:
        clients = {
            server.base_url: stack.enter_context(
                httpx.Client(base_url=server.base_url, timeout=30.0)
            )
            for server in (services.full, services.quiet)
            if server is not None
        }
        full = clients[services.full.base_url]
        token = get_token(full)
        targets = service_targets(get_item_id(full))
        for name in names:  # all of them first: a wrong status stops the run before any load
            client = clients[services.for_endpoint(name).base_url]
            preflight(client, name, targets[name], token)
        report: dict[str, Any] = {"redis_url": services.redis_url}
        if services.quiet is not None:
            quiet = clients[services.quiet.base_url]
            check = check_access_log_flag(services, quiet, targets["item_read"].path)
            report["no_access_log_check"] = check
            if not check["effective"]:
                warnings.append(
                    f"{mode}: `app api --no-access-log` still writes the access log "
                    f"({check['access_log_lines_written']} line(s) for one {check['request']}); "
                    "health_no_access_log measures /health, which skips it anyway"
                )
        for name in names:
            server = services.for_endpoint(name)
            # Again just before the run: it warms the caches (an earlier run may have retired
            # an entry: item_create bumps the items' generation).
            preflight(clients[server.base_url], name, targets[name], token)
            result = run_wrk(f"{mode}: {name}", server.base_url, targets[name], load, token)
            problems += result.problems(f"{mode}.{name}")
            endpoints[name] = with_ratio(result, ceiling)
    # Again after the endpoints (before the flood, whose hashing may outlast it): how far the
    # machine moved meanwhile. The ratios are only as good as this is small.
    recheck = run_wrk(f"{mode}: ceiling again", ceiling_server.base_url, HEALTH, load, None)
    problems += recheck.problems(f"{mode}.ceiling_recheck")
    report |= {
        "ceiling": ceiling.as_dict(),
        "endpoints": endpoints,
        "ceiling_recheck": recheck.as_dict(),
        "ceiling_drift": round(recheck.rps / ceiling.rps - 1, 3) if ceiling.rps else None,
    }
    if LOGIN_FLOOD in only:
        flood = login_flood(services.full.base_url, load, token)
        report[LOGIN_FLOOD] = flood.as_dict()
        problems += [f"{mode}.{p}" for p in flood.problems()]
    report["loadavg_1m"] = {"start": started.loadavg_1m, "end": round(os.getloadavg()[0], 2)}
    report["other_cpu_cores_mean"] = started.other_cores()
    report["service_logs"] = {
        server.name: scan_service_log(server.log)
        for server in (services.full, services.quiet)
        if server is not None
    }
    for server_name, log in report["service_logs"].items():
        if log["notable_count"]:
            warnings.append(f"{mode}: {server_name} logged {log['notable_count']} line(s) "
                            "above INFO (see service_logs)")  # fmt: skip
    report["problems"] = problems
    return report, problems, warnings


def evaluate_targets(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target in each mode that measured its endpoint: ratio, target, met."""
    found: dict[str, Any] = {}
    for mode, report in modes.items():
        for name, goal in TARGETS.items():
            endpoint = report["endpoints"].get(goal.endpoint)
            if endpoint is None:
                continue
            ratio = endpoint["ratio_to_ceiling"]
            found[f"{name}_{mode}"] = {
                "what": goal.what,
                "mode": mode,
                "endpoint": goal.endpoint,
                "ratio": ratio,
                "target": goal.ratio,
                "met": ratio is not None and ratio >= goal.ratio,
                "ceiling_drift": report["ceiling_drift"],
            }
    return found


def wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def settings(args: argparse.Namespace, modes: Sequence[str], only: Sequence[str]) -> dict[str, Any]:
    return {
        "modes": list(modes),
        "duration": args.duration,
        "connections": args.connections,
        "threads": THREADS,
        "login_connections": min(args.connections, LOGIN_MAX_CONNECTIONS),
        "probe_connections": PROBE_CONNECTIONS,
        "database": args.database_url.split(":", 1)[0] if args.database_url else "sqlite",
        "seed": {"users": SEED_USERS, "items": SEED_ITEMS},
        "rate_limits": NO_LIMIT,
        "service_logging": "LOG_LEVEL=info LOG_FORMAT=json",
        "only": list(only),
    }


def run(args: argparse.Namespace, modes: Sequence[str]) -> dict[str, Any]:
    only = args.only or list(CHOICES)
    load = Load(duration=args.duration, connections=args.connections)
    report: dict[str, Any] = {"machine": machine(), "settings": settings(args, modes, only)}
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        prepare_database(workdir, args.database_url)
        with running_ceiling(workdir) as ceiling:
            for mode in modes:
                with running_mode(mode, workdir, args.database_url, only) as services:
                    results[mode], found, noted = benchmark_mode(ceiling, services, load, only)
                problems += found
                warnings += noted
    # The first mode's figures where they always were, so older results still compare.
    first = results[modes[0]]
    report["ceiling"] = first["ceiling"]
    report["endpoints"] = first["endpoints"]
    if LOGIN_FLOOD in first:
        report[LOGIN_FLOOD] = first[LOGIN_FLOOD]
    report["top_level_mode"] = modes[0]
    report["modes"] = results
    report["targets"] = evaluate_targets(results)
    report["warnings"] = warnings
    report["problems"] = problems
    return report


# --- Command line --------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHOICES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(CHOICES)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the service against a bare FastAPI ceiling, with wrk.",
        epilog=f"Names for --only: {', '.join(CHOICES)}. The ceiling is always measured.",
    )
    parser.add_argument("--duration", type=_positive, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=_positive, default=32, help="wrk connections")
    parser.add_argument("--only", type=_names, help="comma-separated subset to run")
    parser.add_argument(
        "--mode",
        choices=(*MODES, "both"),
        help="memory: rate limits, cache and auth snapshots in process; redis: in a throwaway "
        "redis-server; default: both if redis-server is on PATH, else memory",
    )
    parser.add_argument(
        "--database-url",
        help="bench against this database (e.g. PostgreSQL) instead of a fresh SQLite; "
        "it gets migrated and seeded",
    )
    return parser.parse_args(argv)


def _on_sigterm(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: servers get stopped


def emit(report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text + "\n")
    print(text)
    progress(f"written to {RESULTS_FILE.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        progress("wrk not found: install it first (Debian/Ubuntu: apt-get install wrk).")
        return 2
    has_redis = shutil.which("redis-server") is not None
    mode = args.mode or ("both" if has_redis else "memory")
    if mode != "memory" and not has_redis:
        progress("redis-server not found: install it (Debian/Ubuntu: apt-get install redis).")
        return 2
    if args.mode is None and not has_redis:
        progress("redis-server not found: memory mode only")
    modes = list(MODES) if mode == "both" else [mode]
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        report = run(args, modes)
    except BenchError as exc:
        progress(f"failed: {exc}")
        return 2
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    emit(report)
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        progress(f"target {name}: {target['ratio']} (>= {target['target']}) {verdict}")
    for warning in report["warnings"]:
        progress(f"WARNING {warning}")
    for problem in report["problems"]:
        progress(f"PROBLEM {problem}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
