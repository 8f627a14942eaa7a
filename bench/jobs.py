"""Job queue latency and throughput on both brokers, with a real `app worker`; prints JSON.

    uv run python bench/jobs.py [--tasks 200] [--burst 500] [--broker embedded|redis|both]

For each broker: a fresh data directory and SQLite database, `app worker -c 2`, then
* latency: `--tasks` no-op tasks sent one at a time; for each, the time from just before the
  send to the task's `started_at` (written by the worker when the task begins), p50/p99/max;
* throughput: `--burst` no-op tasks sent at once, tasks per second until the last finished.
The embedded broker is polled (CELERY_EMBEDDED_POLL_SECONDS, default 0.1 s), so its latency is
bounded below by the poll; Redis wakes the worker at once. The figure to compare between
machines is the ratio of the two, measured in the same run.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/jobs.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from app import models  # noqa: F401 - every table
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.migrate import upgrade_to_head
from app.jobs.celery_app import make_celery
from app.jobs.models import Job, JobState
from app.jobs.service import Jobs
from tests.support.servers import RedisServer
from tests.support.waiting import eventually_async
from tests.support.workers import WorkerProcess

SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdefghijkl"
DEADLINE_S = 120.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(settings: Settings, tasks: int, burst: int) -> dict[str, Any]:
    celery = make_celery(settings)
    jobs = Jobs(celery)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    latencies: list[float] = []
    try:
        for _ in range(tasks):
            sent = datetime.now(UTC)
            task_id = await jobs.send("app.noop")

            async def started_at(task_id: str = task_id) -> datetime | None:
                async with sessionmaker() as session:
                    return (
                        await session.execute(select(Job.started_at).where(Job.id == task_id))
                    ).scalar()

            # Polling the row; the figure is the row's timestamp, not when the poll saw it.
            started: datetime = await eventually_async(
                started_at, timeout=DEADLINE_S, interval=0.005, what=f"task {task_id} to start"
            )
            latencies.append((started - sent).total_seconds() * 1000)
        began = time.monotonic()
        ids = [await jobs.send("app.noop") for _ in range(burst)]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            async with sessionmaker() as session:
                done = (
                    await session.execute(
                        select(func.count())
                        .select_from(Job)
                        .where(Job.id.in_(ids), Job.state == JobState.SUCCESS)
                    )
                ).scalar_one()
            if done == burst:
                break
            if time.monotonic() > deadline:
                break  # reported as incomplete: a figure, not a crash
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began
    finally:
        await engine.dispose()
        celery.close()
    return {
        "latency_ms": {
            "n": len(latencies),
            "p50": round(percentile(latencies, 0.5), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(max(latencies), 1),
            "mean": round(statistics.fmean(latencies), 1),
        },
        "burst": {
            "tasks": burst,
            "finished": done,  # below `tasks` only if the deadline passed
            "seconds": round(elapsed, 2),
            "per_second": round(done / elapsed),
        },
    }


def run_broker(broker: str, workdir: Path, args: argparse.Namespace, redis_url: str | None) -> Any:
    data_dir = workdir / f"{broker}-data"
    data_dir.mkdir()
    values = {"ENVIRONMENT": "test", "SECRET_KEY": SECRET, "APP_DATA_DIR": str(data_dir),
              "LOG_LEVEL": "INFO"}  # fmt: skip
    if redis_url is not None:
        values["CELERY_BROKER_URL"] = redis_url
    fields: dict[str, Any] = {k.lower(): v for k, v in values.items()}
    settings = Settings(_env_file=None, **fields)
    upgrade_to_head(settings)
    worker = WorkerProcess(values, data_dir / "worker.log", concurrency=2)
    worker.start()
    try:
        return asyncio.run(measure(settings, args.tasks, args.burst))
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--broker", choices=["embedded", "redis", "both"], default="both")
    args = parser.parse_args()
    results: dict[str, Any] = {"concurrency": 2}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        workdir = Path(tmp)
        if args.broker in ("embedded", "both"):
            print("embedded broker...", file=sys.stderr)
            results["embedded"] = run_broker("embedded", workdir, args, None)
        if args.broker in ("redis", "both"):
            print("redis broker...", file=sys.stderr)
            with RedisServer() as redis_server:
                results["redis"] = run_broker("redis", workdir, args, redis_server.url)
    if "embedded" in results and "redis" in results:
        results["redis_to_embedded_p50_latency"] = round(
            results["redis"]["latency_ms"]["p50"] / results["embedded"]["latency_ms"]["p50"], 3
        )
        results["redis_to_embedded_throughput"] = round(
            results["redis"]["burst"]["per_second"] / results["embedded"]["burst"]["per_second"], 3
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
