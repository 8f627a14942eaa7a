"""wrk: starting one run (the request built by bench/request.lua from BENCH_* variables),
waiting for it under a deadline, and parsing its `--latency` report into a WrkResult."""

import dataclasses
import os
import re
import subprocess
import time
from typing import Any

from bench.common import BENCH_DIR, BenchError
from bench.pinning import NO_PINNING, Pinning
from bench.targets import Target, request_headers

LUA_SCRIPT = BENCH_DIR / "request.lua"
THREADS = 2
WRK_TIMEOUT = "5s"  # slower than this counts as a socket timeout, not as latency
WRK_GRACE_S = 30  # how long past --duration a wrk may take before it is killed


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
    server_cpu_s: float | None = None  # utime+stime of the server's process group meanwhile
    cpu_ms_per_request: float | None = None  # server_cpu_s / requests: the main figure
    settle_s: float | None = None  # how long the machine took to go quiet before (bench/cpu.py)

    @property
    def tail_ratio(self) -> float | None:
        """p99 / p50: the issue holds every endpoint to <= 3 at 32 connections."""
        return round(self.p99_ms / self.p50_ms, 2) if self.p50_ms else None

    def with_server_cpu(self, seconds: float | None) -> "WrkResult":
        per_request = None
        if seconds is not None and self.requests:
            per_request = round(seconds * 1000 / self.requests, 4)
        cpu = round(seconds, 3) if seconds is not None else None
        return dataclasses.replace(self, server_cpu_s=cpu, cpu_ms_per_request=per_request)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tail_ratio": self.tail_ratio}

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
    pinning: Pinning = NO_PINNING

    def connections_for(self, target: Target) -> int:
        return min(self.connections, target.max_connections or self.connections)


@dataclasses.dataclass(frozen=True, slots=True)
class WrkRun:
    process: "subprocess.Popen[str]"
    connections: int
    deadline: float


def start_wrk(
    base_url: str,
    target: Target,
    *,
    duration: int,
    connections: int,
    token: str | None,
    pinning: Pinning = NO_PINNING,
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
        pinning.wrk(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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


def wrk_version() -> str:
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).splitlines()[0].strip()
