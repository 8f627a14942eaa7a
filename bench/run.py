"""Load benchmark: requests/sec and latency per endpoint, as ratios to a ceiling.

What one run measures, over loopback only, with wrk (2 threads, bounded duration/connections):

* the ceiling: `GET /health` of a bare FastAPI app (bench/bare_app.py) served like `app api`
  serves the service (one uvicorn process, httptools, uvloop, no access log);
* the service in embedded mode, on a fresh database (SQLite in a temp dir, or --database-url)
  seeded with 50 users and 2000 items: health, one item, /users/me, a page of items, item
  creation and login (Argon2, so on fewer connections);
* a login flood: light `GET /health` traffic while logins run flat out, next to the same light
  traffic alone. It shows whether password hashing starves the event loop.

Why ratios: absolute figures depend on the machine and on whatever else runs on it, and shared
runners and laptops are noisy. The ceiling is measured in the same run, on the same machine,
under the same noise, so `ratio_to_ceiling` (endpoint rps / ceiling rps) is the figure to
compare between runs and machines; the absolute numbers are context.

A benchmark of errors is worthless: each endpoint is requested once first and must answer its
expected status (wrk itself counts 3xx as success), then wrk's non-2xx/3xx count and socket
errors are reported per endpoint and listed under "problems" (exit status 1 if any).

    uv run python bench/run.py [--duration 5] [--connections 32] [--only health,login]

JSON goes to stdout and bench/results/latest.json; progress goes to stderr.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlencode

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "request.lua"
RESULTS_FILE = BENCH_DIR / "results" / "latest.json"

HOST = "127.0.0.1"
SECRET_KEY = "bench-only-signing-key-not-a-secret-0123456789ab"  # 48 characters
DEMO_USER = "demo0"
DEMO_PASSWORD = "Demo-password-1"  # what `app seed` gives every demo user
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
LOG_TAIL_LINES = 40

FORM = "application/x-www-form-urlencoded"
ITEM_BODY = json.dumps({"title": "bench", "price": "9.99", "currency": "USD"})
LOGIN_BODY = urlencode({"username": DEMO_USER, "password": DEMO_PASSWORD})

ENDPOINTS = ("health", "item_read", "users_me", "items_list", "item_create", "login")
LOGIN_FLOOD = "login_flood"
CHOICES = (*ENDPOINTS, LOGIN_FLOOD)


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
        "item_read": Target(f"/api/v1/items/{item_id}"),
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
    return finish_wrk(
        start_wrk(base_url, target, duration=load.duration, connections=connections, token=token)
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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


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
    try:
        yield Server(name, process, log, f"http://{HOST}:{port}")
    finally:
        progress(f"stopping {name}")
        stop(process)


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


def service_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    return {
        **os.environ,
        "ENVIRONMENT": "development",
        "DEBUG": "false",
        "APP_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url or "",  # empty: SQLite in APP_DATA_DIR
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "warning",
    }


@contextlib.contextmanager
def running_service(workdir: Path, database_url: str | None) -> Iterator[Server]:
    """Migrate, seed, then `app api` on a free port: the service as deployed, one process."""
    env = service_env(workdir / "data", database_url)
    setup_log = workdir / "setup.log"
    app_step("migrate", env=env, cwd=workdir, log=setup_log)
    app_step("seed", "--users", str(SEED_USERS), "--items", str(SEED_ITEMS), env=env,
             cwd=workdir, log=setup_log)  # fmt: skip
    port = free_port()
    command = uv_command("app", "api", "--host", HOST, "--port", str(port), "--no-access-log")
    with serving("service", command, port=port, env=env, cwd=workdir, log=workdir / "api.log") as s:
        wait_ready(s)
        yield s


@contextlib.contextmanager
def running_ceiling(workdir: Path) -> Iterator[Server]:
    """bench/bare_app.py under the uvicorn options `app api` ends up with."""
    port = free_port()
    command = uv_command(
        "uvicorn", "bare_app:app", "--app-dir", str(BENCH_DIR), "--host", HOST,
        "--port", str(port), "--workers", "1", "--http", "httptools", "--loop", "uvloop",
        "--no-access-log", "--no-server-header", "--log-level", "warning",
    )  # fmt: skip
    log = workdir / "bare.log"
    with serving("ceiling", command, port=port, env=dict(os.environ), cwd=workdir, log=log) as s:
        wait_ready(s)
        yield s


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
    flood = start_wrk(
        base_url, LOGIN, duration=load.duration + 1, connections=connections, token=token
    )
    try:
        during = finish_wrk(
            start_wrk(
                base_url, HEALTH, duration=load.duration, connections=PROBE_CONNECTIONS,
                token=token,
            )
        )  # fmt: skip
    except BaseException:
        flood.process.kill()
        flood.process.wait()
        raise
    return Flood(alone, during, finish_wrk(flood))


def benchmark(
    ceiling_server: Server, service: Server, load: Load, only: Sequence[str]
) -> dict[str, Any]:
    ceiling = run_wrk("ceiling", ceiling_server.base_url, HEALTH, load, None)
    problems = ceiling.problems("ceiling")
    with httpx.Client(base_url=service.base_url, timeout=30.0) as client:
        token = get_token(client)
        targets = service_targets(get_item_id(client))
        for name in only:
            if name in targets:
                preflight(client, name, targets[name], token)
    endpoints: dict[str, Any] = {}
    for name in (n for n in ENDPOINTS if n in only):
        result = run_wrk(name, service.base_url, targets[name], load, token)
        problems += result.problems(name)
        endpoints[name] = with_ratio(result, ceiling)
    report: dict[str, Any] = {"ceiling": ceiling.as_dict(), "endpoints": endpoints}
    if LOGIN_FLOOD in only:
        flood = login_flood(service.base_url, load, token)
        report[LOGIN_FLOOD] = flood.as_dict()
        problems += flood.problems()
    report["problems"] = problems
    return report


def wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def settings(args: argparse.Namespace, only: Sequence[str]) -> dict[str, Any]:
    return {
        "duration": args.duration,
        "connections": args.connections,
        "threads": THREADS,
        "login_connections": min(args.connections, LOGIN_MAX_CONNECTIONS),
        "probe_connections": PROBE_CONNECTIONS,
        "database": args.database_url.split(":", 1)[0] if args.database_url else "sqlite",
        "seed": {"users": SEED_USERS, "items": SEED_ITEMS},
        "only": list(only),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    only = args.only or list(CHOICES)
    load = Load(duration=args.duration, connections=args.connections)
    report: dict[str, Any] = {"machine": machine(), "settings": settings(args, only)}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        with (
            running_service(workdir, args.database_url) as service,
            running_ceiling(workdir) as ceiling,
        ):
            report |= benchmark(ceiling, service, load, only)
            # At LOG_LEVEL=warning with no access log, any line here deserves a look.
            if tail := log_tail(service.log):
                report["service_log_tail"] = tail
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
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        report = run(args)
    except BenchError as exc:
        progress(f"failed: {exc}")
        return 2
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    emit(report)
    for problem in report["problems"]:
        progress(f"PROBLEM {problem}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
