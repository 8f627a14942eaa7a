"""A real Celery worker for tests: `app worker` in its own process group, as deployed.

The worker and the in-process API share one settings dict, passed to the worker as
environment variables, so both sides see the same database, broker and data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.config import Settings
from tests.servers import tail

APP = str(Path(sys.executable).parent / "app")
READY_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 30.0


def subprocess_env(values: dict[str, str]) -> dict[str, str]:
    """Our environment minus anything that configures the app, plus `values`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(values)
    return env


class WorkerProcess:
    def __init__(
        self, values: dict[str, str], log_file: Path, *, concurrency: int = 2, queues: str = ""
    ) -> None:
        self.values = values
        self.log_file = log_file
        self.concurrency = concurrency
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        argv = [APP, "worker", "-c", str(self.concurrency)]
        if self.queues:
            argv += ["-Q", self.queues]
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=subprocess_env(self.values),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill() takes the pool processes too
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n{self.tail()}")
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                if b" ready." in log.read():
                    return
            time.sleep(0.05)  # polling the log for the ready line, bounded by the deadline
        raise RuntimeError(f"worker not ready in {READY_DEADLINE_SECONDS}s:\n{self.tail()}")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): running tasks finish; the group is killed after a deadline."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the worker and its pool processes: a crash, nothing cleaned up."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)
