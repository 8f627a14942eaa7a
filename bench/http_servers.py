"""A/B of the HTTP server under the app: requests/s and server CPU per request.

Candidates, all one process serving `app.main:serve_app` on one seeded SQLite database, access
log off (the server's cost is what differs, not the log's):

* `uvicorn`: stock uvicorn, httptools + uvloop, the options `app api` had before the limits;
* `app-api`: `app api`, uvicorn with app.core.http_server's protocol (header/line limits,
  read timeouts, connection cap);
* `granian`: granian's ASGI interface with uvloop (optional: `--candidates uvicorn,app-api`).

Each round runs every candidate on `GET /health` and on an authenticated small JSON
`POST /api/v1/items/` (wrk -t1 -c32 for --duration seconds), candidates interleaved, for
--rounds rounds. CPU is utime+stime from /proc of every process in the server's process group,
before and after each wrk run, divided by the requests wrk completed. All servers run at once
(idle while not measured), so the rounds interleave without restarts. Loopback only.

    uv run python bench/http_servers.py [--rounds 3] [--duration 5] [--connections 32]

JSON on stdout; progress on stderr.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/http_servers.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from bench.common import HOST, progress
from bench.service import Server, prepare_database, service_env, serving, wait_ready
from bench.targets import ITEM_BODY, Target, get_token, request_headers
from bench.wrk import LUA_SCRIPT, WRK_GRACE_S, WRK_TIMEOUT, Load, parse_wrk
from tests.support.processes import free_port

BIN = Path(sys.executable).parent
CANDIDATES = ("uvicorn", "app-api", "granian")
TARGETS = {
    "health": Target("/health"),
    "item_create": Target(
        "/api/v1/items/",
        method="POST",
        expected_status=201,
        body=ITEM_BODY,
        content_type="application/json",
        authorized=True,
    ),
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def command(candidate: str, port: int) -> list[str]:
    if candidate == "app-api":
        return [str(BIN / "app"), "api", "--host", HOST, "--port", str(port), "--no-access-log"]
    if candidate == "uvicorn":  # what app/cli.py passed before the limits
        return [str(BIN / "uvicorn"), "app.main:serve_app", "--factory", "--host", HOST,
                "--port", str(port), "--http", "httptools", "--loop", "uvloop",
                "--no-access-log", "--no-server-header", "--no-proxy-headers",
                "--timeout-keep-alive", "75", "--log-level", "warning"]  # fmt: skip
    return [str(BIN / "granian"), "--interface", "asgi", "--factory", "--host", HOST,
            "--port", str(port), "--loop", "uvloop", "--workers", "1",
            "--log-level", "warning", "app.main:serve_app"]  # fmt: skip


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in the group (the server and its children)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


@contextlib.contextmanager
def servers(workdir: Path, names: Sequence[str]) -> Iterator[dict[str, Server]]:
    env = {**service_env(workdir / "data", None, None), "ACCESS_LOG": "false"}
    with contextlib.ExitStack() as stack:
        started: dict[str, Server] = {}
        for name in names:
            port = free_port()
            started[name] = stack.enter_context(
                serving(
                    name,
                    command(name, port),
                    port=port,
                    env=env,
                    cwd=workdir,
                    log=workdir / f"{name}.log",
                )
            )
        for server in started.values():
            wait_ready(server, timeout=180)
        yield started


def measure(server: Server, target: Target, load: Load, token: str) -> dict[str, Any]:
    headers = request_headers(target, token)
    env = {
        **os.environ,
        "BENCH_METHOD": target.method,
        "BENCH_BODY": target.body or "",
        "BENCH_CONTENT_TYPE": headers.get("Content-Type", ""),
        "BENCH_AUTHORIZATION": headers.get("Authorization", ""),
    }
    wrk = ["wrk", "-t1", f"-c{load.connections}", f"-d{load.duration}s",
           f"--timeout={WRK_TIMEOUT}", "--latency", "-s", str(LUA_SCRIPT),
           server.base_url + target.path]  # fmt: skip
    before = group_cpu_seconds(server.group.pid)
    done = subprocess.run(
        wrk, env=env, capture_output=True, text=True, timeout=load.duration + WRK_GRACE_S,
        check=True,
    )  # fmt: skip
    cpu = group_cpu_seconds(server.group.pid) - before
    result = parse_wrk(done.stdout, load.connections)
    return {
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "non_2xx": result.non_2xx,
        "socket_errors": {kind: n for kind, n in result.socket_errors.items() if n},
        "cpu_us_per_request": round(cpu / result.requests * 1e6, 1) if result.requests else None,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [run["rps"] for run in runs]
    cpu = [run["cpu_us_per_request"] for run in runs if run["cpu_us_per_request"] is not None]
    return {
        "rps_median": statistics.median(rps),
        "rps_runs": rps,
        "cpu_us_per_request_median": statistics.median(cpu) if cpu else None,
        "cpu_us_per_request_runs": cpu,
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": sum(sum(run["socket_errors"].values()) for run in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args(argv)
    names = [name for name in args.candidates.split(",") if name]
    load = Load(duration=args.duration, connections=args.connections)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {target: [] for target in TARGETS} for name in names
    }
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        prepare_database(workdir, None)
        with servers(workdir, names) as running:
            tokens = {}
            for name, server in running.items():
                with httpx.Client(base_url=server.base_url, timeout=10) as client:
                    tokens[name] = get_token(client)
            for round_number in range(1, args.rounds + 1):
                for target_name, target in TARGETS.items():
                    for name in names:
                        progress(f"round {round_number}: {name} {target_name}")
                        runs[name][target_name].append(
                            measure(running[name], target, load, tokens[name])
                        )
    report = {
        "load": {"threads": 1, "connections": args.connections, "duration_s": args.duration,
                 "rounds": args.rounds, "loadavg_1m_at_end": os.getloadavg()[0]},
        "results": {
            name: {target: summary(results) for target, results in per_target.items()}
            for name, per_target in runs.items()
        },
        "runs": runs,
    }  # fmt: skip
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
