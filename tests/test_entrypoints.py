"""The standard entry points, run as their users run them: real processes on loopback ports.

`uvicorn app.main:app`, `fastapi run` and gunicorn with uvicorn workers serve /health and stop
cleanly on SIGTERM; `celery -A app.worker` runs a worker that answers `inspect ping` and runs a
task, beat (stock or `app beat`) ticks, Flower answers; workers and beat keep the liveness file
fresh.
"""

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade_to_head
from app.jobs.celery_app import make_celery
from tests.support.processes import GroupProcess, free_port, tail
from tests.support.servers import RedisServer, require_server, running
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.workers import subprocess_env

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent  # pyproject.toml: `fastapi run` reads it here
READY_SECONDS = 120.0  # two shared cores: a cold start of a few processes can be slow
STOP_SECONDS = 60.0
LIVENESS_INTERVAL = "1"


def wait_until(condition: Callable[[], bool], what: str, process: "Process") -> None:
    process.wait_until(condition, timeout=READY_SECONDS, what=what, interval=0.1)


class Process(GroupProcess):
    """A command in its own process group, its output in a file read while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(argv, env=env, cwd=ROOT, stdout=log)
        self.log = log
        self.popen = self.process

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return tail(self.log, 60)

    def terminate(self) -> int:
        """SIGTERM to the leader only, as `docker stop` sends it (what it started must stop
        with it); the group is killed if it overstays."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not stop within {STOP_SECONDS:.0f}s of SIGTERM\n{self.tail()}")

    def assert_stops_cleanly(self) -> None:
        status = self.terminate()
        assert status == 0, self.tail()
        assert "Traceback" not in self.output(), self.tail()
        with pytest.raises(ProcessLookupError):  # nothing of it is left: workers, pool...
            os.killpg(self.popen.pid, 0)


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    process = Process(argv, env, log)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated embedded database for the HTTP servers: the app's background jobs log
    errors (with tracebacks) on a database without tables."""
    path = tmp_path_factory.mktemp("entry")
    upgrade_to_head(make_settings(path))
    return path


def app_env(data_dir: Path, **values: str) -> dict[str, str]:
    return subprocess_env({"APP_DATA_DIR": str(data_dir), "SECRET_KEY": TEST_SECRET, **values})


SERVERS = ("uvicorn", "fastapi-run", "gunicorn")


def server_argv(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [str(BIN / "uvicorn"), "app.main:app", "--port", str(port)]
    if server == "fastapi-run":  # the app comes from [tool.fastapi] in pyproject.toml (cwd)
        return [sys.executable, "-m", "fastapi_cli", "run", "--host", "127.0.0.1",
                "--port", str(port)]  # fmt: skip
    return [str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "app.main:app"]  # fmt: skip


@pytest.mark.parametrize("server", SERVERS)
def test_a_standard_server_serves_the_app_and_stops_on_sigterm(
    server: str, data_dir: Path, tmp_path: Path
) -> None:
    if server == "fastapi-run" and importlib.util.find_spec("fastapi_cli") is None:
        require_server("fastapi-cli is not installed (`fastapi run` needs it)")
    port = free_port()
    with started(server_argv(server, port), app_env(data_dir), tmp_path / "log") as process:

        def healthy() -> bool:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except httpx.TransportError:
                return False
            return response.status_code == 200 and response.json()["status"] == "ok"

        wait_until(healthy, f"{server} /health", process)
        # The full app with its lifespan: readiness queries the database the lifespan opened.
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        process.assert_stops_cleanly()


@pytest.fixture(scope="module")
def redis_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A throwaway Redis as broker and result backend, and a migrated database."""
    with running(RedisServer(), "redis-server") as redis:
        path = tmp_path_factory.mktemp("celery")
        upgrade_to_head(make_settings(path))
        yield {
            "APP_DATA_DIR": str(path),
            "SECRET_KEY": TEST_SECRET,
            "REDIS_URL": redis.url,
            # Results are stored only when asked for (the app reads the jobs table): asked
            # here, so the stock `result.get()` below works as Celery users expect.
            "CELERY_RESULT_BACKEND": redis.url,
            "LIVENESS_INTERVAL_SECONDS": LIVENESS_INTERVAL,
        }


def celery_cli(*args: str) -> list[str]:
    return [str(BIN / "celery"), "-A", "app.worker", *args]


def assert_liveness_advances(path: Path, process: Process) -> None:
    wait_until(path.exists, f"liveness file {path}", process)
    first = path.stat().st_mtime_ns
    wait_until(lambda: path.stat().st_mtime_ns > first, "liveness file touched again", process)


def test_the_stock_celery_worker_pings_runs_a_task_and_keeps_its_liveness_file(
    redis_env: dict[str, str], tmp_path: Path
) -> None:
    liveness = tmp_path / "worker-alive"
    env = subprocess_env({**redis_env, "LIVENESS_FILE": str(liveness)})
    argv = celery_cli("worker", "-c", "1", "--loglevel", "INFO")
    with started(argv, env, tmp_path / "worker.log") as worker:
        wait_until(lambda: " ready." in worker.output(), "worker ready", worker)
        ping = subprocess.run(
            celery_cli("inspect", "ping", "--timeout", "10"), env=env, capture_output=True,
            text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout

        sender_settings = make_settings(
            Path(redis_env["APP_DATA_DIR"]),
            redis_url=redis_env["REDIS_URL"],
            celery_result_backend=redis_env["CELERY_RESULT_BACKEND"],
        )
        sender = make_celery(sender_settings)
        try:
            result = sender.send_task("app.noop", kwargs={"echo": "stock"})
            assert result.get(timeout=READY_SECONDS) == {"echo": "stock"}
        finally:
            sender.close()
        assert_liveness_advances(liveness, worker)
        worker.assert_stops_cleanly()


@pytest.mark.parametrize(
    "argv",
    [celery_cli("beat", "--loglevel", "INFO"), [str(BIN / "app"), "beat"]],
    ids=["celery-beat", "app-beat"],
)
def test_beat_starts_and_touches_its_liveness_file_on_every_tick(
    argv: list[str], redis_env: dict[str, str], tmp_path: Path
) -> None:
    liveness = tmp_path / "beat-alive"
    env = subprocess_env({**redis_env, "LIVENESS_FILE": str(liveness)})
    with started(argv, env, tmp_path / "beat.log") as beat:
        assert_liveness_advances(liveness, beat)
        process_status = beat.terminate()
        assert process_status == 0, beat.tail()
        assert "Traceback" not in beat.output(), beat.tail()


def test_flower_starts_and_answers(redis_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    argv = celery_cli("flower", f"--port={port}", "--address=127.0.0.1")
    with started(argv, subprocess_env(redis_env), tmp_path / "flower.log") as flower:

        def answers() -> bool:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
            except httpx.TransportError:
                return False
            return response.status_code == 200 and response.text == "OK"

        wait_until(answers, "flower /healthcheck", flower)
        assert httpx.get(f"http://127.0.0.1:{port}/workers", timeout=10).status_code == 200
        flower.terminate()
