"""HTTP_KEEPALIVE_TIMEOUT_SECONDS reaches the real server: `app api` keeps an idle keep-alive
connection for that long, not uvicorn's 5 s default (a proxy reusing a connection the app had
just closed answers 502)."""

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import APP, cli_env
from tests.support.processes import GroupProcess, free_port, http_ok

KEEPALIVE_SECONDS = 2  # short, so the test is; the default is 75


@pytest.fixture
def api(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = cli_env(tmp_path, HTTP_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_SECONDS))
    log = tmp_path / "api.log"
    api = GroupProcess(
        [APP, "api", "--port", str(port), "--no-access-log"], env=env, stdout=log, name="app api"
    )
    try:
        api.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout=60, what="GET /health"
        )
        yield port
    finally:
        stopped = api.stop(signal.SIGINT, grace=30)
        assert stopped, f"app api ignored SIGINT and was killed\n{api.logs()}"


def _get_health(connection: socket.socket) -> None:
    connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        assert chunk, "closed before answering"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += connection.recv(4096)
    assert b"connection: close" not in head.lower()


def test_idle_keepalive_connection_lasts_the_configured_time(api: int) -> None:
    with socket.create_connection(("127.0.0.1", api), timeout=5) as connection:
        _get_health(connection)
        idle_since = time.monotonic()
        # Nothing arrives, not even the close, for the first second...
        connection.settimeout(1.0)
        with pytest.raises(TimeoutError):
            connection.recv(1)
        # ...and the connection still serves (this restarts the server's idle timer).
        _get_health(connection)
        idle_since = time.monotonic()
        # Then the server closes it after the setting, well before uvicorn's default 5 s.
        connection.settimeout(10.0)
        assert connection.recv(1) == b""  # EOF: the server closed it
        idle = time.monotonic() - idle_since
    assert KEEPALIVE_SECONDS - 0.5 <= idle <= KEEPALIVE_SECONDS + 1.5, idle
