"""A/B of two checkouts of the service, interleaved finely enough for a busy machine.

`bench.run` measures one checkout per run; on a shared machine the noise between two runs
(minutes apart) is larger than most changes. Here both services run at once on the same
database (and Redis), pinned to the same core, and wrk alternates between them in short
bursts (A B B A ...), so each side sees the same noise. Per endpoint: server CPU per request
(total CPU over total requests of all its bursts), B over A, and the median p50/p99 of bursts.

    git archive <A commit> | tar -x -C /tmp/a && (cd /tmp/a && uv sync --locked)
    uv run python -m bench.ab --a-root /tmp/a --database-url postgresql://... --mode redis \
        --only users_me,item_read_auth --rounds 6 --burst 2

B is this checkout unless --b-root says otherwise. With --a-floor, A is the same-work floor
(bench/floor_app.py) instead of a checkout: B/A is then the floor ratio, measured side by side
rather than in one burst each, as `bench.run` does (whose floor figures move by 15% from run
to run on this machine).
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/ab.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from bench.common import HOST, ROOT, BenchError, progress
from bench.measure import measure
from bench.pinning import Pinning, choose
from bench.service import (
    Server,
    prepare_database,
    running_floor,
    running_redis,
    service_env,
    serving,
    wait_ready,
)
from bench.targets import (
    ENDPOINTS,
    FLOOR_ENDPOINTS,
    get_item_id,
    get_token,
    preflight,
    service_targets,
)
from bench.wrk import Load, WrkResult
from tests.support.processes import free_port


@contextlib.contextmanager
def running_checkout(
    side: str, root: Path, workdir: Path, env: dict[str, str], pinning: Pinning
) -> Iterator[Server]:
    """`app api` from the checkout at `root` (its own environment, `uv run --project`)."""
    uv = shutil.which("uv")
    if uv is None:
        raise BenchError("uv not found on PATH")
    port = free_port()
    command = pinning.server(
        [uv, "run", "--project", str(root), "app", "api", "--host", HOST, "--port", str(port)]
    )
    log = workdir / f"service-{side}.log"
    with serving(f"service {side}", command, port=port, env=env, cwd=workdir, log=log) as server:
        wait_ready(server)
        yield server


@dataclasses.dataclass
class Tally:
    requests: int = 0
    cpu_s: float = 0.0
    p50: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def add(self, result: WrkResult, name: str) -> None:
        self.requests += result.requests
        self.cpu_s += result.server_cpu_s or 0.0
        self.p50.append(result.p50_ms)
        self.p99.append(result.p99_ms)
        self.problems += result.problems(name)

    def as_dict(self) -> dict[str, Any]:
        cpu_ms = self.cpu_s * 1000 / self.requests if self.requests else None
        p50 = statistics.median(self.p50) if self.p50 else None
        p99 = statistics.median(self.p99) if self.p99 else None
        return {
            "requests": self.requests,
            "cpu_ms_per_request": round(cpu_ms, 4) if cpu_ms else None,
            "p50_ms_median": p50,
            "p99_ms_median": p99,
            "tail_ratio": round(p99 / p50, 2) if p50 and p99 else None,
            "p99_ms_bursts": self.p99,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [n for n in args.only.split(",") if n]
    pinning = choose(args.pin)
    load = Load(duration=args.burst, connections=args.connections, pinning=pinning)
    tallies = {name: {"A": Tally(), "B": Tally()} for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        prepare_database(workdir, args.database_url)
        redis_url = stack.enter_context(running_redis()) if args.mode == "redis" else None
        env = service_env(workdir / "data", args.database_url, redis_url)
        servers = {
            "A": stack.enter_context(
                running_floor("floor A", workdir, env, pinning)
                if args.a_floor
                else running_checkout("A", args.a_root, workdir, env, pinning)
            ),
            "B": stack.enter_context(running_checkout("B", args.b_root, workdir, env, pinning)),
        }
        clients = {
            side: stack.enter_context(httpx.Client(base_url=s.base_url, timeout=30.0))
            for side, s in servers.items()
        }
        token = get_token(clients["B"])
        targets = service_targets(get_item_id(clients["B"]))
        for round_number in range(args.rounds):
            order = ("A", "B") if round_number % 2 == 0 else ("B", "A")
            for name in names:
                for side in order:
                    preflight(clients[side], name, targets[name], token)  # warm, and correct
                    result = measure(f"{side} {name}", servers[side], targets[name], load, token)
                    tallies[name][side].add(result, f"{side}.{name}")
    report: dict[str, Any] = {
        "settings": {**vars(args), "a_root": None if args.a_floor else str(args.a_root),
                     "b_root": str(args.b_root), "pinning": pinning.as_dict()},
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "endpoints": {},
        "problems": [],
    }  # fmt: skip
    for name, sides in tallies.items():
        a, b = sides["A"].as_dict(), sides["B"].as_dict()
        ratio = None
        if a["cpu_ms_per_request"] and b["cpu_ms_per_request"]:
            ratio = round(b["cpu_ms_per_request"] / a["cpu_ms_per_request"], 3)
        report["endpoints"][name] = {"A": a, "B": b, "cpu_b_over_a": ratio}
        report["problems"] += sides["A"].problems + sides["B"].problems
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Interleaved A/B of two checkouts, with wrk.")
    side_a = parser.add_mutually_exclusive_group(required=True)
    side_a.add_argument("--a-root", type=Path, help="the A checkout (synced)")
    side_a.add_argument(
        "--a-floor", action="store_true", help="A is the same-work floor (bench/floor_app.py)"
    )
    parser.add_argument("--b-root", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--only", default="users_me,item_read_auth")
    parser.add_argument("--mode", choices=("memory", "redis"), default="redis")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--burst", type=int, default=2, help="seconds per wrk burst")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--database-url")
    args = parser.parse_args(argv)
    names = {n for n in args.only.split(",") if n}
    unknown = names - set(ENDPOINTS)
    if unknown:
        parser.error(f"unknown endpoints {sorted(unknown)}")
    no_floor = names - FLOOR_ENDPOINTS
    if args.a_floor and no_floor:
        parser.error(f"the floor doesn't serve {sorted(no_floor)}")
    try:
        report = run(args)
    except BenchError as exc:
        progress(f"failed: {exc}")
        return 2
    print(json.dumps(report, indent=2))
    for name, e in report["endpoints"].items():
        a, b = e["A"], e["B"]
        progress(f"{name}: cpu ms/req A {a['cpu_ms_per_request']} B {b['cpu_ms_per_request']} "
                 f"(B/A {e['cpu_b_over_a']}); p50/p99 A {a['p50_ms_median']}/{a['p99_ms_median']}"
                 f" B {b['p50_ms_median']}/{b['p99_ms_median']}")  # fmt: skip
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
