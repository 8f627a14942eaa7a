"""The embedded broker: acknowledged messages leave, a dead worker's messages come back."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery.worker import state as worker_state
from kombu.connection import Connection

from app.jobs import broker
from app.jobs.broker import BrokerBusy, requeue_invisible, worker_lock
from tests.support.settings import make_settings
from tests.support.workers import APP, subprocess_env


def _rows(database: Path) -> list[tuple[int, bool]]:
    import sqlite3

    with sqlite3.connect(database) as connection:
        return [
            (row[0], bool(row[1]))
            for row in connection.execute("SELECT id, visible FROM kombu_message ORDER BY id")
        ]


def _connection(tmp_path: Path) -> tuple[Connection, Path]:
    settings = make_settings(tmp_path)
    broker.register()
    return Connection(settings.broker_url), settings.embedded_broker_path


_TAKE_AND_DIE = """
import os, sys
from kombu import Connection
from app.jobs import broker
broker.register()
with Connection(sys.argv[1]) as connection:
    queue = connection.SimpleQueue("default")
    print(queue.get(timeout=5).payload, flush=True)
    os._exit(9)  # dies holding the message: no ack, no clean close
"""


def test_an_acknowledged_message_is_deleted_and_a_dead_workers_message_is_requeued(
    tmp_path: Path,
) -> None:
    connection, database = _connection(tmp_path)
    with connection:
        queue = connection.SimpleQueue("default")
        queue.put({"n": 1})
        queue.put({"n": 2})
        queue.get(timeout=5).ack()
        queue.close()
    assert _rows(database) == [(2, True)]
    died = subprocess.run(
        [sys.executable, "-c", _TAKE_AND_DIE, connection.as_uri(include_password=True)],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert died.returncode == 9, died.stderr
    assert _rows(database) == [(2, False)]  # invisible for ever, in plain kombu

    assert requeue_invisible(database) == 1  # what `app worker` does first
    connection, _ = _connection(tmp_path)
    with connection:
        queue = connection.SimpleQueue("default")
        again = queue.get(timeout=5)
        assert again.payload == {"n": 2}
        again.ack()
        queue.close()
    assert _rows(database) == []


def test_a_cleanly_closed_consumer_gives_its_messages_back(tmp_path: Path) -> None:
    connection, database = _connection(tmp_path)
    with connection:
        queue = connection.SimpleQueue("default")
        queue.put({"n": 1})
        queue.get(timeout=5)  # never acknowledged
        queue.close()
    assert [visible for _, visible in _rows(database)] == [True]


def test_a_rejected_message_with_requeue_comes_back_once(tmp_path: Path) -> None:
    connection, database = _connection(tmp_path)
    with connection:
        queue = connection.SimpleQueue("default")
        queue.put({"n": 1})
        queue.get(timeout=5).reject(requeue=True)
        assert [visible for _, visible in _rows(database)] == [True]
        queue.get(timeout=5).ack()
        assert _rows(database) == []
        queue.close()


def test_requeue_on_a_missing_broker_file_is_a_no_op(tmp_path: Path) -> None:
    assert requeue_invisible(tmp_path / "absent.sqlite") == 0


def test_one_worker_at_a_time_on_the_embedded_broker(tmp_path: Path) -> None:
    database = tmp_path / "celery-broker.sqlite"
    with worker_lock(database):
        with pytest.raises(BrokerBusy), worker_lock(database):
            pass
        # The command refuses too, with a readable reason, instead of double-delivering.
        result = subprocess.run(
            [APP, "worker"],
            env=subprocess_env({"APP_DATA_DIR": str(tmp_path), "ENVIRONMENT": "test"}),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert b"another worker is using the embedded broker" in result.stdout + result.stderr
    with worker_lock(database):  # released with its holder
        pass


def test_a_worker_told_to_stop_stops_polling_but_still_gets_a_waiting_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's loop drains for 2 s a cycle and drains once more after a SIGTERM: without this,
    an idle embedded worker waited out both (4-5 s) before its warm shutdown began."""
    connection, _ = _connection(tmp_path)
    received: list[object] = []
    with connection:
        queue = connection.SimpleQueue("default")
        queue.put({"n": 1})
        queue.consumer.register_callback(lambda body, message: received.append(body))
        queue.consumer.consume()
        monkeypatch.setattr(worker_state, "should_stop", 0)  # what the SIGTERM handler sets
        connection.drain_events(timeout=30)
        assert received == [{"n": 1}]  # taken before giving up: delivered, not dropped
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=30)
        assert time.monotonic() - started < 5  # one poll, not the 30 s timeout
        monkeypatch.setattr(worker_state, "should_stop", None)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.5)  # not stopping: polls the whole timeout
        assert time.monotonic() - started >= 0.5
        queue.close()
