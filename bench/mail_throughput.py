"""Emails per second through `app worker -c 2` to a local SMTP sink; prints JSON.

    uv run python bench/mail_throughput.py [--emails N] [--deadline S]

For each broker (embedded SQLite; Redis when `redis-server` is installed) it migrates a fresh
SQLite database under a temp dir, writes N outbox rows, starts a real worker with two
processes on the email queue, sends one `app.email.send` per row and times until the sink
(aiosmtpd on loopback, plain SMTP, no delay) has received all N. Every mail goes through the
whole path: claim (conditional UPDATE), MIME from the templates, SMTP session, the commit of
"sent" before the end of DATA. Bounded: a run that passes --deadline stops and says so.
"""

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and its name would shadow
# the standard library's `email` package: put the repository root there instead.
if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[1])


import argparse
import asyncio
import json
import shutil
import tempfile
import time
from typing import Any

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.migrate import upgrade_to_head
from app.email import service as outbox
from app.jobs.celery_app import make_celery
from tests.support.servers import RedisServer
from tests.support.smtp import start_smtp_server
from tests.support.workers import WorkerProcess

SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdefghijkl"


async def _rows(settings: Settings, count: int) -> list[int]:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            emails = [
                outbox.queue(session=session, settings=settings, recipient=f"user{n}@example.com",
                             subject="Bench", template="test", context={"requested_by": "bench"})
                for n in range(count)
            ]  # fmt: skip
            await session.commit()
            return [email.id for email in emails]
    finally:
        await engine.dispose()


def run(broker: str, count: int, deadline: float, redis_url: str | None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-email-{broker}-"))
    smtp = start_smtp_server(base, tls=False)
    try:
        values = {
            "ENVIRONMENT": "test", "SECRET_KEY": SECRET, "APP_DATA_DIR": str(base),
            "LOG_LEVEL": "INFO", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
            "SMTP_SECURITY": "none",
        }  # fmt: skip
        if redis_url is not None:
            values["CELERY_BROKER_URL"] = redis_url
        settings = Settings(_env_file=None, **{k.lower(): v for k, v in values.items()})  # type: ignore[arg-type]
        upgrade_to_head(settings)
        ids = asyncio.run(_rows(settings, count))
        worker = WorkerProcess(values, base / "worker.log", concurrency=2, queues="email")
        worker.start()
        celery = make_celery(settings)
        try:
            started = time.perf_counter()
            for email_id in ids:
                celery.send_task(outbox.SEND_TASK, args=[email_id])
            enqueued = time.perf_counter() - started
            while smtp.sink.count() < count and time.perf_counter() - started < deadline:
                time.sleep(0.01)  # polling the sink's counter, bounded by the deadline
            elapsed = time.perf_counter() - started
        finally:
            celery.close()
            worker.stop()
        received = smtp.sink.count()
        return {
            "broker": broker,
            "emails": count,
            "received": received,
            "finished": received == count,
            "seconds": round(elapsed, 2),
            "emails_per_second": round(received / elapsed, 1),
            "enqueue_seconds": round(enqueued, 2),
            "worker_processes": 2,
        }
    finally:
        smtp.controller.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()
    results = [run("embedded", args.emails, args.deadline, None)]
    if shutil.which("redis-server"):
        redis = RedisServer()
        redis.start()
        try:
            results.append(
                run("redis", args.emails, args.deadline, f"redis://127.0.0.1:{redis.port}/7")
            )
        finally:
            redis.stop()
    print(json.dumps({"bench": "email", "results": results}, indent=2))


if __name__ == "__main__":
    main()
