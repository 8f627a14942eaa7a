"""Streaming exports and uploads against a real server process; prints JSON.

    uv run python bench/files.py [--rows N] [--database-url postgresql://... | --postgres]
                                 [--upload-mb M]

For each database (SQLite always; PostgreSQL when a URL is given, or with `--postgres` on a
throwaway server started with tests.support.servers.PostgresServer) it migrates a fresh
database, starts `app api`, fills the items table with `--rows` rows by one INSERT ... SELECT,
then streams `GET /api/v1/exports/items` (CSV) and reports rows per second and the server's peak
RSS growth (VmRSS from /proc, sampled every 20 ms while the export streams). On SQLite it also
uploads a `--upload-mb` file and compares the time with `shutil.copyfile` of the same file.

`goals` holds issue 14's goal per database: the export's peak RSS growth under
`EXPORT_RSS_GROWTH_LIMIT_MB` (with `met`); rows per second is reported, not held to a figure.
Exit status 1 if a goal is missed.
"""

import sys
from pathlib import Path

if not __package__:  # run as `python bench/files.py`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import Settings
from app.core.db import UTCDateTime
from tests.support.processes import GroupProcess, free_port, http_ok
from tests.support.servers import PostgresServer, ServerUnavailable

APP = str(Path(sys.executable).parent / "app")
SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdefghijkl"
PASSWORD = "Bench-password-1"
# Issue 14's goal: exporting 1M rows grows the server's resident memory by less than this.
EXPORT_RSS_GROWTH_LIMIT_MB = 50.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)


async def fill_items(database_url: str, owner_id: int, rows: int) -> None:
    engine = create_async_engine(database_url)
    now = bindparam("now", datetime.now(UTC), type_=UTCDateTime())
    if database_url.startswith("sqlite"):
        series = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :rows) "
        source = "FROM s"
    else:
        series = ""
        source = "FROM generate_series(1, :rows) AS s(n)"
    statement = text(
        f"{series}INSERT INTO items (title, description, price, currency, owner_id, created_at,"
        f" updated_at) SELECT 'Item ' || n, '=formula ' || n, n % 1000 + 0.5, 'USD', :owner,"
        f" :now, :now {source}"
    ).bindparams(now)
    async with engine.begin() as connection:
        await connection.execute(statement, {"rows": rows, "owner": owner_id})
    await engine.dispose()


def start_server(env: dict[str, str], port: int, log: Path) -> GroupProcess:
    server = GroupProcess(
        [APP, "api", "--port", str(port), "--no-access-log"], env=env, stdout=log, name="app api"
    )
    try:
        server.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/health"),
            timeout=30,
            interval=0.1,
            what="GET /health",
        )
    except AssertionError:
        server.kill()
        raise
    return server


def login(base: str) -> tuple[int, dict[str, str]]:
    name = f"bench{os.getpid()}x{int(time.time())}"  # a given database may hold earlier runs
    user = {"username": name, "email": f"{name}@example.com", "password": PASSWORD,
            "password_confirm": PASSWORD}  # fmt: skip
    httpx.post(f"{base}/api/v1/auth/register", json=user).raise_for_status()  # 202
    token = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": name, "password": PASSWORD}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    me = httpx.get(f"{base}/api/v1/users/me", headers=headers).json()
    return int(me["id"]), headers


def export(base: str, headers: dict[str, str], pid: int) -> dict[str, float]:
    baseline = rss_kib(pid)
    sampler = RssSampler(pid)
    sampler.start()
    lines = 0
    started = time.perf_counter()
    with httpx.stream(
        "GET", f"{base}/api/v1/exports/items", timeout=600,
        headers={**headers, "Accept-Encoding": "identity"},
    ) as response:  # fmt: skip
        response.raise_for_status()
        for chunk in response.iter_raw():
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    rows = lines - 1  # the header
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_second": round(rows / elapsed),
        "server_rss_baseline_mb": round(baseline / 1024, 1),
        "server_rss_peak_growth_mb": round((sampler.peak - baseline) / 1024, 1),
    }


def upload(base: str, headers: dict[str, str], work: Path, megabytes: int) -> dict[str, float]:
    source = work / "big.png"
    with source.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        for _ in range(megabytes):
            handle.write(os.urandom(1024 * 1024))
    started = time.perf_counter()
    shutil.copyfile(source, work / "copy.png")
    copy_seconds = time.perf_counter() - started
    (work / "copy.png").unlink()
    # A fairer floor for what an upload must do: read, SHA-256 and write every byte.
    started = time.perf_counter()
    digest = hashlib.sha256()
    with source.open("rb") as reader, (work / "copy.png").open("wb") as writer:
        while block := reader.read(1024 * 1024):
            digest.update(block)
            writer.write(block)
    hashed_copy_seconds = time.perf_counter() - started
    (work / "copy.png").unlink()
    started = time.perf_counter()
    with source.open("rb") as handle:
        response = httpx.post(
            f"{base}/api/v1/files", files={"file": ("big.png", handle, "image/png")},
            headers=headers, timeout=600,
        )  # fmt: skip
    upload_seconds = time.perf_counter() - started
    response.raise_for_status()
    size = source.stat().st_size
    source.unlink()
    return {
        "megabytes": megabytes,
        "upload_seconds": round(upload_seconds, 3),
        "upload_mb_per_second": round(size / 1024 / 1024 / upload_seconds, 1),
        "copyfile_seconds": round(copy_seconds, 3),
        "ratio_to_copyfile": round(upload_seconds / copy_seconds, 2),
        "hashed_copy_seconds": round(hashed_copy_seconds, 3),
        "ratio_to_hashed_copy": round(upload_seconds / hashed_copy_seconds, 2),
    }


def run_one(database_url: str | None, rows: int, upload_mb: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-files-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update({
        "APP_DATA_DIR": str(work), "SECRET_KEY": SECRET, "RATE_LIMIT_ENABLED": "false",
        "MAX_UPLOAD_BYTES": str((upload_mb + 1) * 1024 * 1024), "LOG_LEVEL": "WARNING",
    })  # fmt: skip
    if database_url:
        env["DATABASE_URL"] = database_url
    subprocess.run([APP, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    server = start_server(env, port, work / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        owner_id, headers = login(base)
        settings = Settings(_env_file=None, app_data_dir=work, database_url=database_url)
        started = time.perf_counter()
        asyncio.run(fill_items(settings.sqlalchemy_url, owner_id, rows))
        result: dict[str, object] = {"fill_seconds": round(time.perf_counter() - started, 1)}
        result["export_csv"] = export(base, headers, server.pid)
        if database_url is None and upload_mb:
            result["upload"] = upload(base, headers, work, upload_mb)
        return result
    finally:
        server.stop(grace=30)
        shutil.rmtree(work, ignore_errors=True)


def export_goal(result: Mapping[str, object]) -> dict[str, object]:
    export_csv = result["export_csv"]
    assert isinstance(export_csv, dict)
    growth = float(export_csv["server_rss_peak_growth_mb"])
    return {
        "what": f"export of {export_csv['rows']} rows: server peak RSS growth, MB",
        "figure": growth,
        "target": EXPORT_RSS_GROWTH_LIMIT_MB,
        "met": growth < EXPORT_RSS_GROWTH_LIMIT_MB,
        "rows_per_second": export_csv["rows_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--upload-mb", type=int, default=100)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="a PostgreSQL database to fill (it is migrated)")
    where.add_argument(
        "--postgres", action="store_true", help="also on a throwaway PostgreSQL server"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {"sqlite": run_one(None, args.rows, args.upload_mb)}
    if args.database_url:
        results["postgresql"] = run_one(args.database_url, args.rows, 0)
    elif args.postgres:
        try:
            with PostgresServer() as postgres:
                url = postgres.create_database(f"bench_files_{os.getpid()}")
                results["postgresql"] = run_one(url, args.rows, 0)
        except ServerUnavailable as exc:
            raise SystemExit(f"--postgres: {exc}") from None
    goals = {f"export_rss_growth_{name}": export_goal(result) for name, result in results.items()}
    print(json.dumps({**results, "goals": goals}, indent=2))
    sys.exit(0 if all(goal["met"] for goal in goals.values()) else 1)


if __name__ == "__main__":
    main()
