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
(`TARGETS`: server CPU per request over the ceiling's and over the same-work floor's,
bench/floor_app.py, and p99/p50) are reported as met or not; missing one does not change the
exit status. Servers are pinned to one core and wrk to the others (`--pin`, bench/pinning.py).

    uv run python -m bench.run [--duration 5] [--connections 32] [--mode memory|redis|both]
                               [--only health,item_read_auth,login] [--no-pin] [--workers 2]

(`uv run python bench/run.py` works too.) JSON goes to stdout and bench/results/latest.json;
progress goes to stderr. The parts: bench/targets.py (what is requested, the goals),
bench/wrk.py (running and parsing wrk), bench/cpu.py (how busy the machine was),
bench/service.py (the processes), bench/measure.py (the runs); this file is the command line
and the report.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/run.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import os
import platform
import shutil
import signal
import tempfile
from collections.abc import Sequence
from importlib import metadata
from types import FrameType
from typing import Any, NoReturn

from bench.common import BENCH_DIR, ROOT, BenchError, progress
from bench.measure import PROBE_CONNECTIONS, benchmark_mode, workers_scaling
from bench.pinning import choose, default_pin
from bench.service import (
    NO_LIMIT,
    SEED_ITEMS,
    SEED_USERS,
    prepare_database,
    running_ceiling,
    running_mode,
    running_service,
    service_env,
)
from bench.targets import CHOICES, LOGIN_FLOOD, LOGIN_MAX_CONNECTIONS, evaluate_targets
from bench.wrk import THREADS, Load, wrk_version

RESULTS_FILE = BENCH_DIR / "results" / "latest.json"
MODES = ("memory", "redis")
PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis")  # versions noted


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
        "workers": args.workers,
    }


def run(args: argparse.Namespace, modes: Sequence[str]) -> dict[str, Any]:
    only = args.only or list(CHOICES)
    pinning = choose(args.pin)
    load = Load(duration=args.duration, connections=args.connections, pinning=pinning)
    report: dict[str, Any] = {"machine": machine(), "settings": settings(args, modes, only)}
    report["settings"]["pinning"] = pinning.as_dict()
    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        prepare_database(workdir, args.database_url)
        with running_ceiling(workdir, pinning) as ceiling:
            for mode in modes:
                with running_mode(mode, workdir, args.database_url, only, pinning) as services:
                    results[mode], found, noted = benchmark_mode(ceiling, services, load, only)
                problems += found
                warnings += noted
        if args.workers > 1:
            scaling = run_workers_scaling(workdir, args, load)
            report["workers_scaling"] = scaling
            problems += scaling["problems"]
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


def run_workers_scaling(workdir: Path, args: argparse.Namespace, load: Load) -> dict[str, Any]:
    env = service_env(workdir / "data", args.database_url, None)
    with (
        running_service("scaling one worker", workdir, env, access_log=True) as one,
        running_service(
            f"scaling {args.workers} workers", workdir, env, access_log=True, workers=args.workers
        ) as many,
    ):
        return workers_scaling(one, many, args.workers, load)


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
        "--workers",
        type=_positive,
        default=1,
        help="also measure `app api --workers N` against one worker, both unpinned (memory "
        "mode, cached item read); 1 (the default) skips it",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=default_pin(),
        help="run each server on one core and wrk on the others (taskset); default: on with "
        "2+ CPUs and taskset on PATH",
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
        progress(f"target {name}: {target['figure']} {target['ratio']} "
                 f"(<= {target['target']}) {verdict}")  # fmt: skip
    if (scaling := report.get("workers_scaling")) is not None:
        verdict = "met" if scaling["met"] else "MISSED"
        trust = "" if scaling["conclusive"] else " (inconclusive: other work took the cores)"
        progress(f"workers_scaling: ratio {scaling['ratio']} (>= {scaling['target']}) "
                 f"{verdict}{trust}; CPU per request "
                 f"x{scaling['cpu_per_request_ratio']}")  # fmt: skip
    for warning in report["warnings"]:
        progress(f"WARNING {warning}")
    for problem in report["problems"]:
        progress(f"PROBLEM {problem}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
