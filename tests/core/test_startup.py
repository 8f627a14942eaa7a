"""Startup with a configured database or Redis that is not there: bounded wait, one line, exit 3."""

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from app.core.startup import Unreachable, dependencies, wait_for_dependencies
from tests.support.processes import free_port
from tests.support.servers import RedisServer, running
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.workers import APP, subprocess_env

PASSWORD = "Pa55-word-never-shown"  # must not appear in any output
TIMEOUT_SECONDS = 1.0


CASES = [
    ("api", "DATABASE_URL"),
    ("serve", "REDIS_URL"),
    ("worker", "DATABASE_URL"),
    ("beat", "REDIS_URL"),
    ("migrate", "DATABASE_URL"),
]


def test_an_unreachable_server_is_named_in_one_line_and_exits_3(tmp_path: Path) -> None:
    # All five at once: each is mostly Python start-up, and there are two cores.
    started: list[tuple[str, str, subprocess.Popen[str]]] = []
    for command, variable in CASES:
        port = free_port()  # bound, then released: nothing listens there
        url = (
            f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app"
            if variable == "DATABASE_URL"
            else f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        )
        data_dir = tmp_path / command
        env = subprocess_env(
            {
                "APP_DATA_DIR": str(data_dir),
                "SECRET_KEY": TEST_SECRET,
                "STARTUP_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
                variable: url,
            }
        )
        port_option = ["--port", str(free_port())] if command in {"api", "serve"} else []
        process = subprocess.Popen(
            [APP, command, *port_option], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append((command, url, process))
    for command, url, process in started:
        try:
            stdout, stderr = process.communicate(timeout=120)  # no hang
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        output = f"{command}: {stdout}{stderr}"
        assert process.returncode == 3, output
        assert PASSWORD not in output
        assert "Traceback" not in output
        what = "the database" if url.startswith("postgresql") else "Redis"
        assert stderr.splitlines() == [stderr.strip()], output  # one line
        assert stderr.startswith(f"cannot reach {what} at {url.replace(PASSWORD, '***')}: "), output


async def test_the_wait_is_bounded_and_retried(tmp_path: Path) -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app"
    settings = make_settings(tmp_path, url, startup_timeout_seconds=TIMEOUT_SECONDS)
    started = time.monotonic()
    with pytest.raises(Unreachable) as raised:
        await wait_for_dependencies(settings)
    elapsed = time.monotonic() - started
    assert TIMEOUT_SECONDS * 0.5 <= elapsed < TIMEOUT_SECONDS + 5  # retried, then gave up
    assert PASSWORD not in str(raised.value)


async def test_a_server_that_comes_up_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    with running(RedisServer(), "redis-server") as redis:
        redis.kill()  # down, its port kept
        settings = make_settings(tmp_path, redis_url=redis.url, startup_timeout_seconds=60)
        (dependency,) = dependencies(settings)
        with pytest.raises(Exception, match="Connect"):
            await dependency.check()
        waiting = asyncio.create_task(wait_for_dependencies(settings))
        await asyncio.to_thread(redis.revive)
        await asyncio.wait_for(waiting, timeout=30)
