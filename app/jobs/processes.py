"""`app serve` runs the worker and the scheduler as child processes and stops them cleanly.

Children get their own session, so a Ctrl-C on the terminal reaches only the parent, which
then stops them in order: the API first (in-flight requests finish), then the worker with a
warm shutdown (running tasks finish; late acknowledgement re-queues whatever a hard stop
interrupts), then beat. A child that dies while serving is restarted with backoff.

SIGTERM (`docker stop`, systemd) must take the same path as Ctrl-C. Its default disposition
kills the process outright, and uvicorn, after its own graceful shutdown, restores the
handler it found and raises the signal again: with the default in place the parent died
there, before `__exit__`, and left the worker and beat running in their own sessions. So
for its lifetime the supervisor turns SIGTERM into an exception that unwinds through
`__exit__`; while stopping, a second SIGINT or SIGTERM kills the children instead of
abandoning them.
"""

import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from app.core.shutdown import raise_terminated

logger = logging.getLogger("app.serve")
RESTART_BACKOFF_MAX_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

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
    _previous_sigterm: Any = None

    def __enter__(self) -> "Supervisor":
        # Signal handlers belong to the main thread, which is where `app serve` runs us.
        self._previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            for child in self.children:
                child.start()
            self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._thread.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        previous = {sig: signal.signal(sig, self._kill_children) for sig in STOP_SIGNALS}
        try:
            self._stopping.set()
            if self._thread is not None:
                self._thread.join()
            for child in self.children:  # in order: the worker finishes before beat goes
                child.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)

    def _kill_children(self, sig: int, _frame: FrameType | None) -> None:
        logger.warning("%s while stopping: killing the children", signal.Signals(sig).name)
        for child in self.children:
            child.kill()

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
