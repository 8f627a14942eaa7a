"""Throwaway real database servers for tests and bench (no Docker), on tests.support.processes.

The servers are started from the Debian binaries installed on the machine:

* ``PostgresServer`` runs ``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/<v>/bin``
  (falling back to ``PATH``) on a free loopback port with trust auth and
  durability turned off for speed.  PostgreSQL refuses to run as root, so when
  the tests run as root the server is run as the ``postgres`` user via ``runuser``.
* ``RedisServer`` runs ``redis-server`` from ``PATH`` on a free loopback port,
  without persistence unless ``persistent=True`` (the append-only file, fsynced
  every second, as deployed: what a broker needs to survive a restart).

Both raise ``ServerUnavailable`` (with a human reason) when the binaries are
missing, and ``ServerStartError`` (with the server's log tail) when they are
present but the server does not come up.  Use ``require_server`` to turn
``ServerUnavailable`` into a skip locally and a failure in CI.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Protocol, Self, TypeVar
from urllib.parse import quote

import pytest
from mirakuru import TCPExecutor
from mirakuru.exceptions import (
    AlreadyRunning,
    ProcessExitedWithError,
    ProcessFinishedWithError,
    TimeoutExpired,
)

from tests.support.processes import HOST, free_port, tail, tcp_executor
from tests.support.waiting import eventually

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerStartError",
    "ServerUnavailable",
    "require_server",
]

PG_USER = "postgres"  # both the OS user (when root) and the database superuser
_PG_BINARIES = ("initdb", "pg_ctl", "postgres")
_PG_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


class ServerUnavailable(Exception):
    """The server binaries (or the user to run them as) are not on this machine."""


class ServerStartError(RuntimeError):
    """The binaries exist but the server failed to start; the message has the log tail."""


@contextlib.contextmanager
def running(server: ServerT, what: str) -> Iterator[ServerT]:
    """Start a server for a fixture or a test, or skip (fail under CI=true) if it's not here."""
    try:
        server.start()
    except ServerUnavailable as exc:
        require_server(f"{what} is not available: {exc}")
    try:
        yield server
    finally:
        server.stop()


def require_server(reason: str) -> NoReturn:
    """Give up on a test that needs a real server: skip locally, fail in CI.

    In CI a skipped real-server test would silently hide missing coverage, so it fails.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: real-server tests must not be skipped)")
    pytest.skip(reason)


def _clean_env() -> dict[str, str]:
    """The current environment minus libpq PG* variables that could redirect commands."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _world_traversable(directory: Path) -> bool:
    """Whether every directory on the way to ``directory`` is o+x (usable by postgres)."""
    path = directory.resolve()
    return all(part.stat().st_mode & 0o001 for part in (path, *path.parents))


def _version_key(bin_dir: str) -> tuple[int, ...]:
    version = Path(bin_dir).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_postgres_bin_dir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Debian installs them in ``/usr/lib/postgresql/<version>/bin`` (not on PATH);
    the highest version wins.  Otherwise use PATH, resolving symlinks so that a
    ``/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl`` link leads to
    the real directory (where ``psql`` lives too).
    """
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for found in (shutil.which(name) for name in _PG_BINARIES):
        if found:
            candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        bin_dir = Path(candidate)
        if all(os.access(bin_dir / name, os.X_OK) for name in _PG_BINARIES):
            return bin_dir
    raise ServerUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        "/usr/lib/postgresql/*/bin or on PATH; install them with "
        "`apt-get install postgresql`"
    )


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, for one test session.

    >>> with PostgresServer() as pg:
    ...     url = pg.create_database("app_test")
    """

    def __init__(self, *, bin_dir: Path | None = None) -> None:
        self._bin_dir = bin_dir
        self.port: int | None = None
        self.base_dir: Path | None = None
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        return self._bin_dir

    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "socket"

    @property
    def log_file(self) -> Path:
        return self._base() / "postgres.log"

    # -- lifecycle -----------------------------------------------------------

    def _prepare_user(self) -> None:
        """When root, arrange to run server commands as the ``postgres`` OS user."""
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            raise ServerUnavailable(
                f"running as root, and PostgreSQL refuses to run as root, but there is "
                f"no {PG_USER!r} user to run it as (the postgresql package creates it)"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServerUnavailable(
                "running as root, and PostgreSQL refuses to run as root, but `runuser` "
                "(util-linux) is not on PATH to switch to the postgres user"
            )
        self._run_as = [runuser, "-u", PG_USER, "--"]
        self._owner = (entry.pw_uid, entry.pw_gid)

    def _run(self, argv: list[str], *, what: str, timeout: float) -> None:
        """Run a server-side command (as ``postgres`` when root); raise with its output."""
        try:
            proc = subprocess.run(
                [*self._run_as, *argv],
                cwd=self._base(),  # the postgres user may not be able to read our cwd
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(
                f"{what} timed out after {timeout:.0f}s\n--- server log ---\n{tail(self.log_file)}"
            ) from exc
        if proc.returncode != 0:
            raise ServerStartError(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"--- output ---\n{(proc.stdout + proc.stderr).strip()}\n"
                f"--- server log ---\n{tail(self.log_file)}"
            )

    def start(self) -> None:
        if self.base_dir is not None:
            raise RuntimeError("PostgresServer is already started")
        bin_dir = self.bin_dir  # raises ServerUnavailable before touching the disk
        self._prepare_user()
        # The fresh 0700 directory is handed over to the postgres user when root, so
        # its parent must be world-traversable: the usual temp dir, else /tmp.
        parent = Path(tempfile.gettempdir())
        if self._owner is not None and not _world_traversable(parent):
            parent = Path("/tmp")
        self.base_dir = Path(tempfile.mkdtemp(prefix="pytest-postgres-", dir=parent))
        try:
            self.socket_dir.mkdir()
            if self._owner is not None:
                for path in (self.base_dir, self.socket_dir):
                    os.chown(path, *self._owner)
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    PG_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                what="initdb",
                timeout=120,
            )
            settings = {**_PG_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# added by tests/support/servers.py\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            self._start_on_free_port(bin_dir)
        except BaseException:
            self._cleanup()
            raise

    def _start_on_free_port(self, bin_dir: Path) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port()
            try:
                # -w waits until the postmaster reports it accepts connections.
                self._run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        str(int(_START_TIMEOUT)),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-o",
                        f"-p {self.port}",
                    ],
                    what="pg_ctl start",
                    timeout=_START_TIMEOUT + 10,
                )
            except ServerStartError as exc:
                # Another process grabbed the port between free_port() and bind: retry.
                if attempt < _PORT_ATTEMPTS and "could not bind" in str(exc):
                    continue
                raise
            return

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete its directory. Idempotent."""
        if self.base_dir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "stop",
                        "-w",
                        "-m",
                        "immediate",
                        "-D",
                        str(self.data_dir),
                    ],
                    what="pg_ctl stop",
                    timeout=60,
                )
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        self.port = None

    def halt(self) -> None:
        """Stop the server as an orchestrator restarting it would (fast mode: sessions are told
        "terminating connection due to administrator command"), keeping its data and port."""
        self._run(
            [str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data_dir)],
            what="pg_ctl stop",
            timeout=60,
        )

    def begin_smart_shutdown(self) -> None:
        """Begin a shutdown that waits for the open sessions to end, and return at once:
        meanwhile the server refuses new connections ("the database system is shutting down",
        SQLSTATE 57P03), as during an orchestrator's restart."""
        self._run(
            [str(self.bin_dir / "pg_ctl"), "stop", "-W", "-m", "smart", "-D", str(self.data_dir)],
            what="pg_ctl stop -m smart",
            timeout=60,
        )

    def revive(self) -> None:
        """Start again on the same port and data after `halt`."""
        self._run(
            [
                str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(int(_START_TIMEOUT)),
                "-D", str(self.data_dir), "-l", str(self.log_file), "-o", f"-p {self.port}",
            ],
            what="pg_ctl start",
            timeout=_START_TIMEOUT + 10,
        )  # fmt: skip

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- client helpers ------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy async URL; drop ``+asyncpg`` for plain asyncpg/libpq."""
        if self.port is None:
            raise RuntimeError("PostgresServer is not started")
        return f"postgresql+asyncpg://{PG_USER}@{HOST}:{self.port}/{quote(database, safe='')}"

    def _psql(self) -> str:
        local = self.bin_dir / "psql"
        if os.access(local, os.X_OK):
            return str(local)
        found = shutil.which("psql")
        if found is None:
            raise ServerUnavailable("psql not found next to pg_ctl or on PATH")
        return found

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """``CREATE DATABASE name`` (a copy of ``template``: a file copy, no migration to
        run again; nothing may be connected to it) and return its URL (see ``url``)."""
        for checked in (name, template or name):
            if not _DB_NAME.fullmatch(checked):
                raise ValueError(f"invalid database name {checked!r}: use [A-Za-z_][A-Za-z0-9_]*")
        statement = f'CREATE DATABASE "{name}"'
        if template is not None:
            statement += f' TEMPLATE "{template}"'
        if self.port is None:
            raise RuntimeError("PostgresServer is not started")
        env = {**_clean_env(), "PGCONNECT_TIMEOUT": "10"}
        proc = subprocess.run(
            [
                self._psql(),
                "-X",  # ignore ~/.psqlrc
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-c",
                statement,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"CREATE DATABASE {name} failed (exit {proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}"
            )
        return self.url(name)


class RedisServer:
    """A private redis-server on a free loopback port (mirakuru TCPExecutor: started when the
    port accepts connections, stopped by process group); its data directory (and with
    `persistent`, its append-only file) lives until `stop`, through `kill`/`halt` + `revive`."""

    def __init__(
        self, *, binary: str | None = None, persistent: bool = False, config: Path | None = None
    ) -> None:
        self._binary = binary
        # Append-only file, as deployed (deploy/redis.conf): queues survive a restart.
        self.persistent = persistent
        # A shipped config file (memory budget, eviction policy) under this harness's own
        # port, address, directory and persistence arguments, which win over the file's.
        self.config = config
        self.port: int | None = None
        self.base_dir: Path | None = None
        self._executor: TCPExecutor | None = None
        self._log: IO[bytes] | None = None

    @property
    def binary(self) -> str:
        if self._binary is None:
            found = shutil.which("redis-server")
            if found is None:
                raise ServerUnavailable(
                    "redis-server not found on PATH; install it with `apt-get install redis-server`"
                )
            self._binary = found
        return self._binary

    @property
    def log_file(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("RedisServer is not started")
        return self.base_dir / "redis.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("RedisServer is not started")
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group (mirakuru starts a session)."""
        if self._executor is None or self._executor.process is None:
            raise RuntimeError("RedisServer is not started")
        return self._executor.process.pid

    def start(self) -> None:
        if self.base_dir is not None:
            raise RuntimeError("RedisServer is already started")
        binary = self.binary  # raises ServerUnavailable before touching the disk
        self.base_dir = Path(tempfile.mkdtemp(prefix="pytest-redis-"))
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._spawn(binary)
                except ServerStartError as exc:
                    self._terminate()
                    if attempt < _PORT_ATTEMPTS and "Address already in use" in str(exc):
                        continue
                    raise
                return
        except BaseException:
            self._terminate()
            self._cleanup()
            raise

    def _spawn(self, binary: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self._log = self.log_file.open("ab")
        command = [
            binary,
            *([str(self.config)] if self.config is not None else []),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",  # deploy/redis.conf's: at most 1 s lost to a kill
            "--dir", str(self.base_dir),
            "--daemonize", "no",
        ]  # fmt: skip
        self._executor = tcp_executor(command, self.port, log=self._log, timeout=_START_TIMEOUT)
        try:
            self._executor.start()
        except AlreadyRunning:
            raise ServerStartError(f"port {self.port}: Address already in use") from None
        except (ProcessExitedWithError, TimeoutExpired) as exc:
            raise ServerStartError(
                f"redis-server did not start: {exc}\n--- server log ---\n{tail(self.log_file)}"
            ) from None
        # Listening is not serving: a persistent server answers -LOADING while it reads its
        # append-only file back.
        try:
            eventually(self._ping, timeout=_START_TIMEOUT, what="redis-server to answer PING")
        except AssertionError as exc:
            raise ServerStartError(f"{exc}\n--- server log ---\n{tail(self.log_file)}") from None

    def _ping(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _terminate(self, *, abruptly: bool = False) -> None:
        if self._executor is not None:
            if abruptly:
                self._executor.kill()
            else:
                # A persistent server writes its file on SIGTERM; mirakuru SIGKILLs the group
                # only if it is still there after the timeout.
                with contextlib.suppress(ProcessFinishedWithError):
                    self._executor.stop()
            self._executor = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        self.port = None

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        try:
            self._terminate()
        finally:
            self._cleanup()

    def kill(self) -> None:
        """Stop the process abruptly but keep the port, to simulate an outage."""
        self._terminate(abruptly=True)

    def revive(self) -> None:
        """Start again on the same port after `kill` (empty unless `persistent`)."""
        assert self.port is not None
        self._spawn(self.binary, self.port)

    def halt(self) -> None:
        """SIGTERM, as a container restart does (a persistent server writes its file first);
        `revive` starts it again on the same port."""
        self._terminate()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
