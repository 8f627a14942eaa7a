"""Fixtures for system tests: real API processes (tests.support.apis) on one migrated
PostgreSQL database per test session (created here from the session's `postgres_server`), and
a Redis logical database chosen by the test. When a test fails, the tail of every API process
still running is attached to the report.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.apis import APP, RUNNING, ApiFleet, api_env
from tests.support.servers import PostgresServer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in RUNNING:
            report.sections.append((f"API process {process.name}", process.describe()))
    return report


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def system_database(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A fresh PostgreSQL database, migrated by `app migrate` as an operator would."""
    name = f"system_{secrets.token_hex(4)}"
    # The documented form; the app picks the asyncpg driver itself.
    url = postgres_server.create_database(name).replace("postgresql+asyncpg://", "postgresql://")
    data_dir = tmp_path_factory.mktemp("system-migrate")
    result = subprocess.run(
        [APP, "migrate"],
        env=api_env(data_dir, database_url=url),
        cwd=data_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"app migrate failed:\n{result.stdout}\n{result.stderr}"
    return url


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ApiFleet]:
    """API processes that live for one test."""
    processes = ApiFleet(tmp_path / "api-logs")
    try:
        yield processes
    finally:
        processes.stop()
