"""Where the service's CPU goes under load: py-spy samples one pinned `app api` while wrk
repeats one endpoint, then the samples are summed per package (own time, and time under).

    uv run python -m bench.pyspy --database-url postgresql://... --mode redis \
        --only users_me,item_read_auth --duration 8

Per endpoint it writes the raw collapsed stacks (bench/results/profile-<mode>-<name>.txt, or
floor-<mode>-<name>.txt with --floor, which profiles bench/floor_app.py under the same load;
ignored by git; `flamegraph.pl` or speedscope read them) and prints the top packages and
functions by own samples. py-spy pauses the process at each sample (`--nonblocking` off), so
throughput under the profiler is lower than the bench's: the shares are what to read.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/pyspy.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

import httpx

from bench.common import BENCH_DIR, BenchError, progress
from bench.pinning import choose
from bench.service import (
    prepare_database,
    running_floor,
    running_redis,
    running_service,
    service_env,
)
from bench.targets import (
    ENDPOINTS,
    FLOOR_ENDPOINTS,
    get_item_id,
    get_token,
    preflight,
    service_targets,
)
from bench.wrk import finish_wrk, start_wrk

RESULTS_DIR = BENCH_DIR / "results"
SAMPLE_RATE = 250  # per second
TOP = 25
PROFILE_GRACE_S = 30  # how long past --duration py-spy may take to write its file

# Frames are "function (path/file.py:line)"; the package is the path's first part.
_GROUPS = (
    ("gc", ("<gc>",)),
    ("fastapi", ("fastapi/",)),
    ("starlette", ("starlette/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("sqlalchemy", ("sqlalchemy/",)),
    ("asyncpg", ("asyncpg/",)),
    ("redis", ("redis/", "limits/")),
    ("uvicorn", ("uvicorn/", "httptools/")),
    ("logging", ("logging/", "structlog/", "pythonjsonlogger/")),
    ("prometheus", ("prometheus_client/",)),
    ("jwt", ("jwt/", "cryptography/")),
    ("asyncio", ("asyncio/", "uvloop/")),
    ("app", ("app/",)),
)


def group_of(frame: str) -> str:
    location = frame.rpartition("(")[2]
    for name, prefixes in _GROUPS:
        if location.startswith(prefixes) or any(f"/{p}" in location for p in prefixes):
            return name
    return "other"


def summarize(collapsed: Path) -> dict[str, Any]:
    """Own samples per leaf function and per package; inclusive samples per package."""
    own_fn: collections.Counter[str] = collections.Counter()
    own_pkg: collections.Counter[str] = collections.Counter()
    incl_pkg: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        own_fn[leaf] += count
        own_pkg[group_of(leaf)] += count
        for pkg in {group_of(f) for f in frames}:
            incl_pkg[pkg] += count

    def share(counter: collections.Counter[str], top: int) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)} if total else {}

    return {
        "samples": total,
        "own_percent_by_package": share(own_pkg, len(_GROUPS) + 1),
        "inclusive_percent_by_package": share(incl_pkg, len(_GROUPS) + 1),
        "own_percent_top_functions": share(own_fn, TOP),
    }


def profile_endpoint(name: str, args: argparse.Namespace, workdir: Path, mode: str) -> Any:
    pinning = choose(True)
    redis_ctx = running_redis() if mode == "redis" else None
    redis_url = redis_ctx.__enter__() if redis_ctx is not None else None
    try:
        env = service_env(workdir / "data", args.database_url, redis_url)
        with contextlib.ExitStack() as stack:
            service = stack.enter_context(
                running_service(f"profile {name}", workdir, env, access_log=True, pinning=pinning)
            )
            # The floor has no login: the token and the item come from the service, which
            # then stops before the floor starts (one server on the pinned core).
            with httpx.Client(base_url=service.base_url, timeout=30.0) as client:
                token = get_token(client)
                target = service_targets(get_item_id(client))[name]
                preflight(client, name, target, token)
            server = service
            if args.floor:
                stack.close()
                server = stack.enter_context(running_floor(f"floor {name}", workdir, env, pinning))
                with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
                    preflight(client, name, target, token)
            kind = "floor" if args.floor else "profile"
            out = RESULTS_DIR / f"{kind}-{mode}-{name}.txt"
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [spy, "record", "--pid", str(server.group.pid), "--subprocesses",
                       "--format", "raw", "--rate", str(SAMPLE_RATE), "--gil", "--nolineno",
                       "--duration", str(args.duration), "--output", str(out)]  # fmt: skip
            progress(f"profiling {name} for {args.duration}s")
            sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                result = finish_wrk(
                    start_wrk(server.base_url, target, duration=args.duration,
                              connections=args.connections, token=token, pinning=pinning)
                )  # fmt: skip
                _, err = sampler.communicate(timeout=args.duration + PROFILE_GRACE_S)
            finally:
                if sampler.poll() is None:
                    sampler.kill()
                    sampler.wait()
            if sampler.returncode != 0:
                raise BenchError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
            return {"wrk": result.as_dict(), "file": str(out), **summarize(out)}
    finally:
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="py-spy profiles of the service under wrk.")
    parser.add_argument("--only", default="users_me,item_read_auth")
    parser.add_argument("--mode", choices=("memory", "redis"), default="redis")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url")
    parser.add_argument(
        "--floor", action="store_true", help="profile bench/floor_app.py instead of the service"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(ENDPOINTS)
    if unknown:
        parser.error(f"unknown endpoints {sorted(unknown)}")
    if args.floor and set(names) - FLOOR_ENDPOINTS:
        parser.error(f"the floor doesn't serve {sorted(set(names) - FLOOR_ENDPOINTS)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"mode": args.mode, "loadavg_1m": round(os.getloadavg()[0], 2)}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
            workdir = Path(tmp)
            prepare_database(workdir, args.database_url)
            for name in names:
                report[name] = profile_endpoint(name, args, workdir, args.mode)
    except BenchError as exc:
        progress(f"failed: {exc}")
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
