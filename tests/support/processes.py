"""The one process harness of tests and bench: free ports, commands in their own process
group, waits for readiness, stop by group, log tails.

What comes from mirakuru and what is ours:

* `GroupProcess` is our own small launcher. mirakuru's executors fit badly here: they start
  from `os.environ` plus extra variables (the app's processes need the caller's app settings
  *removed*), block in `start()` one process at a time (a fleet of APIs starts in parallel and
  waits together), and reuse the start timeout as the stop grace. It starts a command with
  `start_new_session=True` (its own group, so the uvicorn/Celery children go with it), writes
  stdout/stderr to files, waits with `tests.support.waiting.eventually` while failing fast if
  the process dies, and stops with a signal to the group then SIGKILL after a grace.
* `tcp_executor` is mirakuru's `TCPExecutor` (wait for a TCP port, group kill, leak cleanup at
  exit) for servers whose environment does not matter: redis-server (tests.support.servers).
* Readiness checks (`port_open`, `http_ok`, `LogWatch`) are plain functions usable with either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
from mirakuru import TCPExecutor

from tests.support.waiting import eventually

__all__ = [
    "HOST",
    "GroupProcess",
    "LogWatch",
    "ProcessDied",
    "free_port",
    "http_ok",
    "port_open",
    "tail",
    "tcp_executor",
]

HOST = "127.0.0.1"
DEFAULT_GRACE_SECONDS = 20.0


def free_port() -> int:
    """Ask the kernel for a free loopback TCP port (racy: callers that can retry, do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` of a log file, or why it could not be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_ok(url: str, *, status: int = 200, timeout: float = 1.0) -> bool:
    """Whether GET `url` answers `status` (a transport error is a no)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == status
    except httpx.TransportError:
        return False


class LogWatch:
    """Looks for text in a log file, past the point where the watch was made (a restarted
    process appends to the same file: its earlier banner must not count)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def has(self, needle: str) -> bool:
        return needle in self.text()


class ProcessDied(AssertionError):
    """The process exited while we waited for it to become ready."""


def signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False if it is already gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


class GroupProcess:
    """A command in its own process group, its output in log files.

    >>> proc = GroupProcess([...], env=env, stdout=log_dir / "api.log")
    >>> proc.wait_until(lambda: http_ok(url), timeout=60, what="the API")
    >>> proc.stop()  # SIGTERM to the group, SIGKILL after the grace
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: Path,
        stderr: Path | None = None,
        name: str | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.command = list(command)
        self.name = name or Path(self.command[0]).name
        self.stdout = stdout
        self.stderr = stderr  # None: both streams go to `stdout`
        stdout.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as files:
            out: IO[bytes] = files.enter_context(stdout.open("ab"))
            err: IO[bytes] | int = (
                files.enter_context(stderr.open("ab")) if stderr is not None else subprocess.STDOUT
            )
            self.process = subprocess.Popen(
                self.command,
                env=env,
                cwd=cwd,
                # A pipe only for a process that reads what to do once started (a worker spare).
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a group of its own: its children are stopped with it
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self, lines: int = 40) -> str:
        text = f"--- {self.stdout} ---\n{tail(self.stdout, lines)}"
        if self.stderr is not None:
            text += f"\n--- {self.stderr} ---\n{tail(self.stderr, lines)}"
        return text

    def describe(self) -> str:
        state = "running" if self.alive() else f"exit code {self.process.returncode}"
        return f"{self.name} (pid {self.pid}, {state})\n{self.logs()}"

    def wait_until(
        self, ready: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
    ) -> None:
        """Wait for `ready()`; raise ProcessDied at once if the process exits meanwhile."""

        def probe() -> bool:
            if not self.alive():
                raise _Exited
            return ready()

        try:
            eventually(
                probe,
                timeout=timeout,
                what=f"{self.name}: {what}",
                interval=interval,
                fail_fast=(_Exited,),
            )
        except _Exited:
            raise ProcessDied(f"{self.name} exited while starting\n{self.describe()}") from None
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def stop(
        self,
        signum: int = signal.SIGTERM,
        grace: float = DEFAULT_GRACE_SECONDS,
        *,
        leader_only: bool = False,
    ) -> bool:
        """Signal the group (or only its leader) and wait for the leader; SIGKILL the group
        after `grace`.

        `leader_only` is how `docker stop`, Kubernetes and `app serve` stop a Celery worker: the
        main process alone gets SIGTERM and stops its pool. A SIGTERM to the whole group also
        kills idle pool processes inside billiard's queue lock, and the main process then waits
        on that lock at exit (30-40 s measured, so a killed group looked like a slow stop).

        True if it exited within the grace (or already had), False if it had to be killed.
        """
        if self.process.poll() is not None:
            return True
        self.send(signum, leader_only=leader_only)
        return self.reap(grace)

    def send(self, signum: int, *, leader_only: bool = False) -> None:
        """The first half of `stop`: signal the group (or its leader), don't wait."""
        if self.process.poll() is not None:
            return
        if leader_only:
            self.process.send_signal(signum)
        else:
            # The leader is not reaped yet, so its group id is still ours to signal.
            signal_group(self.pid, signum)

    def reap(self, grace: float) -> bool:
        """The second half of `stop`: wait for the leader, then SIGKILL the group (at once if
        the leader is gone: children that outlived it, a worker's pool; after `grace` if not).
        True if the leader exited within the grace."""
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        signal_group(self.pid, signal.SIGKILL)
        return True

    def kill(self) -> None:
        """SIGKILL to the whole group: a crash, nothing cleaned up."""
        signal_group(self.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Exited(Exception):
    """Raised by a readiness probe when the process is gone: retrying is pointless."""


def tcp_executor(
    command: Sequence[str], port: int, *, log: IO[bytes], timeout: float, host: str = HOST
) -> TCPExecutor:
    """mirakuru's TCPExecutor: `start()` returns once `host:port` accepts connections and
    raises if the process exits first; `stop()` SIGTERMs the group, `kill()` SIGKILLs it."""
    return TCPExecutor(
        list(command),
        host=host,
        port=port,
        timeout=timeout,
        sleep=0.05,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
