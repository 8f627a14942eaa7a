"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, made crash-safe.

kombu's transport marks a message invisible when a worker takes it and never deletes it, so
a message whose worker died stays invisible for ever, and finished ones pile up. Here an
acknowledged (or rejected, or restored) message's row is deleted, so whatever is still
invisible when a worker starts was taken by a worker that is gone: `requeue_invisible` makes
it visible again. That is only safe while no other worker holds messages, so the embedded
broker serves one worker node at a time (`worker_lock`), which is what embedded mode runs.
"""

import fcntl
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from json import loads
from pathlib import Path
from queue import Empty
from time import monotonic, sleep
from typing import Any

from celery.worker import state as worker_state
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from sqlalchemy import create_engine, delete, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SADeprecationWarning as SAWarning
from sqlalchemy.orm import Session, sessionmaker

ALIAS = "appsqla"  # settings.broker_url uses it: "appsqla+sqlite:///<path>"
SQLITE_TIMEOUT_SECONDS = 30


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: the API publishing and the worker polling don't block each other's reads.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Channel(kombu_sqla.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[str, int] = {}  # delivery tag -> row id, for messages held here
        # The channel's one SQLAlchemy session is used by the consumer loop (_get) and by the
        # worker's pool result thread (acks): unguarded, a busy worker dies with "session in
        # 'prepared' state". Reentrant, because _restore goes through _put.
        self._lock = threading.RLock()

    # One engine per process: a worker forks its pool processes, and a SQLite connection must
    # never cross a fork (kombu caches engines per URL only).
    _engines_by_pid: dict[tuple[int, str], tuple[Engine, sessionmaker[Session]]] = {}

    def _open(self) -> tuple[Engine, sessionmaker[Session]]:
        key = (os.getpid(), self.connection.client.hostname)
        if key not in self._engines_by_pid:
            with kombu_sqla._MUTEX:
                if key not in self._engines_by_pid:
                    engine = self._engine_from_config()
                    kombu_sqla.metadata.create_all(engine)  # type: ignore[attr-defined]
                    self._engines_by_pid[key] = engine, sessionmaker(bind=engine)
        return self._engines_by_pid[key]

    def _engine_from_config(self) -> Engine:
        engine = create_engine(
            self.connection.client.hostname,
            connect_args={"timeout": SQLITE_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        event.listen(engine, "connect", _pragmas)
        return engine

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._lock:
            return super()._put(queue, payload, **kwargs)

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        with self._lock:
            return self._get_locked(queue)

    def _get_locked(self, queue: str) -> dict[str, Any]:
        # kombu's own _get, plus remembering which row carries the message.
        obj = self._get_or_create(queue)
        self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                self.session.query(self.message_cls)
                .filter(self.message_cls.queue_id == obj.id)
                .filter(self.message_cls.visible.is_(True))
                .order_by(self.message_cls.sent_at, self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise Empty()
            msg.visible = False
            payload: dict[str, Any] = loads(bytes_to_str(msg.payload))
            self._rows[payload["properties"]["delivery_tag"]] = msg.id
            return payload
        finally:
            self.session.commit()

    def _forget(self, delivery_tag: str) -> None:
        row_id = self._rows.pop(delivery_tag, None)
        if row_id is not None:
            self.session.execute(delete(self.message_cls).where(self.message_cls.id == row_id))
            self.session.commit()

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        with self._lock:
            super().basic_ack(delivery_tag, multiple=multiple)
            self._forget(delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with self._lock:
            super().basic_reject(delivery_tag, requeue=requeue)  # a requeue: via _restore
            self._forget(delivery_tag)

    def _restore(self, message: Any) -> None:
        with self._lock:
            super()._restore(message)  # stored again as a new, visible row
            self._forget(message.delivery_tag)


class Transport(kombu_sqla.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """kombu's polling loop, which also gives up (as a timeout) once the worker is told to
        stop: Celery's loop drains for up to 2 s a cycle and runs one more cycle after the
        signal, so an idle worker took 4-5 s to start its warm shutdown. Only an empty poll
        gives up: a message already taken is delivered as before."""
        cycle = self.cycle
        assert cycle is not None  # made when the transport is set up
        started = monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            try:
                cycle.get(self._deliver, timeout=timeout)
            except Empty:
                timed_out = timeout is not None and monotonic() - started >= timeout
                if timed_out or _stopping():
                    raise TimeoutError from None  # socket.timeout: the loop's "nothing came"
                if interval is not None:
                    sleep(interval)
            else:
                return


def _stopping() -> bool:
    """Whether this process is a worker told to shut down (warm or cold); never in the API."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def register() -> None:
    TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
    # kombu's models declare `lazy="noload"`, deprecated in SQLAlchemy 2.1; kombu never loads
    # that relationship, so the warning says nothing about us (it would fail the tests).
    warnings.filterwarnings(
        "ignore", message="The ``noload`` loader strategy is deprecated", category=SAWarning
    )


def requeue_invisible(database: Path) -> int:
    """Make messages taken by a worker that died visible again; returns how many.

    Call only while holding `worker_lock`: a live worker's messages are invisible too.
    """
    if not database.exists():
        return 0
    with sqlite3.connect(database, timeout=SQLITE_TIMEOUT_SECONDS) as connection:
        try:
            cursor = connection.execute("UPDATE kombu_message SET visible = 1 WHERE visible = 0")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        return cursor.rowcount


class BrokerBusy(RuntimeError):
    pass


@contextmanager
def worker_lock(database: Path) -> Iterator[None]:
    """Held by the one worker node the embedded broker serves, for as long as it runs."""
    database.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(database.with_suffix(".worker.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BrokerBusy(
                f"another worker is using the embedded broker {database}; it serves one"
                " worker (use -c for more processes, or a Redis broker for more workers)"
            ) from exc
        yield
    finally:
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
