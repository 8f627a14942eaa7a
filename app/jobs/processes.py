"""`app serve` runs the worker and the scheduler as child processes and stops them cleanly.

Children get their own session, so a Ctrl-C on the terminal reaches only the parent, which
then stops them in order: the API first (in-flight requests finish), then the worker with a
warm shutdown (running tasks finish; late acknowledgement re-queues whatever a hard stop
interrupts), then beat. A child that dies while serving is restarted with backoff.
"""

import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field

logger = logging.getLogger("app.serve")
RESTART_BACKOFF_MAX_SECONDS = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    stop_timeout: float
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "app", *self.argv],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # Celery: warm shutdown
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, self.stop_timeout)
            process.kill()
            process.wait()
        logger.info("stopped %s", self.name)


@dataclass
class Supervisor:
    children: list[Child]
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Supervisor":
        for child in self.children:
            child.start()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        for child in self.children:  # in order: the worker finishes before beat goes
            child.stop()

    def _watch(self) -> None:
        backoff = {child.name: 1.0 for child in self.children}
        while not self._stopping.wait(0.5):
            for child in self.children:
                if child.process is None or child.process.poll() is None:
                    continue
                logger.error(
                    "%s exited with status %s; restarting in %.0fs",
                    child.name, child.process.returncode, backoff[child.name],
                )  # fmt: skip
                if self._stopping.wait(backoff[child.name]):
                    return
                backoff[child.name] = min(backoff[child.name] * 2, RESTART_BACKOFF_MAX_SECONDS)
                child.restarts += 1
                child.start()
