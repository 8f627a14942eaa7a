"""Input limits on the real server process (`app api`), spoken to over a raw socket: request
line 414, header size and count 431, a duplicate Host 400, header and body read timeouts 408,
idle connections closed, the connection cap 503 (and its slots freed), chunked bodies over the
cap 413, JSON depth and value counts 413, 422 lists capped. Small limits so the test is quick."""

import contextlib
import json
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pytest

from app.core.migrate import upgrade_to_head
from tests.support.cli import APP, cli_env
from tests.support.processes import free_port, tail
from tests.support.settings import make_settings

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.0
BODY_MIN_RATE = 200  # bytes per second
MAX_CONNECTIONS = 12
LIMITS = {
    "HTTP_MAX_REQUEST_LINE_BYTES": "1024",
    "HTTP_MAX_HEADER_BYTES": "4096",
    "HTTP_MAX_HEADERS": "30",
    "HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "HTTP_BODY_MIN_RATE_BYTES": str(BODY_MIN_RATE),
    "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "MAX_REQUEST_BODY_BYTES": str(1024 * 1024),
    "JSON_MAX_DEPTH": "16",
    "JSON_MAX_ITEMS": "3000",
    "VALIDATION_MAX_ERRORS": "20",
    "RATE_LIMIT_DEFAULT": "100000/minute",
    "RATE_LIMIT_REGISTER": "100000/minute",
}
REGISTER = "/api/v1/auth/register"  # a small JSON body with extra="forbid": no database needed
ESCAPED = "\u00e9\x01"  # two UTF-8 bytes, and a control character JSON writes as \u0001
ENVELOPE_KEYS = {"status", "code", "message", "details", "request_id", "timestamp", "path"}


@dataclass
class Api:
    port: int
    pid: int
    log: Path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data_dir = tmp_path_factory.mktemp("limits")
    upgrade_to_head(make_settings(data_dir))  # no background job logging missing tables
    port = free_port()
    log = data_dir / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [APP, "api", "--port", str(port), "--no-access-log"], env=cli_env(data_dir, **LIMITS),
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, tail(log)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"app api did not come up\n{tail(log)}"
            time.sleep(0.05)
        yield Api(port, process.pid, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert "Traceback" not in log.read_text(errors="replace"), tail(log)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it
    seconds: float  # from the first byte sent to the end of the reply

    def envelope(self, status: int, code: str) -> dict[str, object]:
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers["content-type"] == "application/json"
        error = json.loads(self.body)["error"]
        assert set(error) == ENVELOPE_KEYS
        assert (error["status"], error["code"]) == (status, code)
        assert error["request_id"] == self.headers["x-request-id"]
        return dict(error)


def read_reply(connection: socket.socket, started: float, *, probe_close: bool = True) -> Reply:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"closed without an answer: {received!r}"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    seconds = time.monotonic() - started
    closed = False
    if probe_close:  # a refusal closes at once; a keep-alive connection stays silent
        connection.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            closed = connection.recv(1) == b""
    return Reply(int(lines[0].split()[1]), headers, body, closed, seconds)


def exchange(api: Api, data: bytes, pieces: Sequence[bytes] = (), every: float = 0.0) -> Reply:
    """Send `data`, then each of `pieces` `every` seconds apart (while the server listens),
    and read the reply."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as connection:
        started = time.monotonic()
        connection.sendall(data)
        for piece in pieces:
            time.sleep(every)  # the pace of a slow client is what is tested
            try:
                connection.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_reply(connection, started)


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_normal_request_passes(api: Api) -> None:
    reply = exchange(api, request("GET", "/health", *(f"X-H{i}: {'v' * 50}" for i in range(20))))
    assert reply.status == 200
    assert not reply.closed  # keep-alive as before


def test_a_long_request_line_is_414(api: Api) -> None:
    reply = exchange(api, request("GET", "/health?q=" + "a" * 2000))
    error = reply.envelope(414, "uri_too_long")
    assert error["path"] == ""  # the URL is what was refused
    assert reply.closed


def test_too_many_header_bytes_is_431(api: Api) -> None:
    reply = exchange(api, request("GET", "/health", "X-Big: " + "a" * 5000))
    error = reply.envelope(431, "request_header_fields_too_large")
    assert error["path"] == "/health"
    assert reply.closed


def test_limits_hold_on_a_kept_alive_connection(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as connection:
        connection.sendall(request("GET", "/health"))
        assert read_reply(connection, time.monotonic(), probe_close=False).status == 200
        connection.sendall(request("GET", "/health", "X-Big: " + "a" * 5000))
        reply = read_reply(connection, time.monotonic())
    reply.envelope(431, "request_header_fields_too_large")
    assert reply.closed


def test_too_many_headers_is_431(api: Api) -> None:
    reply = exchange(api, request("GET", "/health", *(f"X-H{i}: 1" for i in range(31))))
    reply.envelope(431, "request_header_fields_too_large")
    assert reply.closed


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _send_until_refused(connection: socket.socket, limit: int) -> int:
    """Bytes of an endless header sent before the server closed the connection (or `limit`)."""
    piece, sent = b"a" * 65536, 0
    try:
        while sent < limit:
            connection.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        return sent
    return sent


def test_an_endless_header_is_cut_off_without_buffering_it(api: Api) -> None:
    before = _rss_kib(api.pid)
    attack = 48 * 1024 * 1024  # what the attacker run sent
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = _send_until_refused(connection, attack)
    assert sent < 8 * 1024 * 1024  # refused long before (socket buffers hold the rest)
    assert _rss_kib(api.pid) - before < 16 * 1024


def test_a_duplicate_host_is_400(api: Api) -> None:
    reply = exchange(api, request("GET", "/api/v1/items", "Host: evil.example"))
    error = reply.envelope(400, "bad_request")
    assert "Host" in str(error["message"])


def test_a_slow_request_head_is_cut_off(api: Api) -> None:
    # Slowloris: a header byte every 0.2 s keeps arriving, and still the head has a deadline.
    reply = exchange(
        api, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", [b"a"] * 40, every=0.2
    )
    reply.envelope(408, "request_timeout")
    assert reply.closed
    assert HEADER_TIMEOUT - 0.1 <= reply.seconds <= HEADER_TIMEOUT + 1.5, reply.seconds


def test_a_connection_that_sends_nothing_is_closed(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection:
        started = time.monotonic()
        assert connection.recv(1) == b""  # closed, without an answer (there was no request)
        waited = time.monotonic() - started
    assert HEADER_TIMEOUT - 0.1 <= waited <= HEADER_TIMEOUT + 1.5, waited


def test_a_slow_body_is_cut_off(api: Api) -> None:
    # 10 bytes per 0.25 s: 40 B/s, under the 200 B/s minimum.
    head = request("POST", REGISTER, "Content-Type: application/json", "Content-Length: 2000")
    reply = exchange(api, head, [b" " * 10] * 40, every=0.25)
    reply.envelope(408, "request_timeout")
    assert reply.closed
    assert reply.seconds <= 2 * BODY_TIMEOUT + 1.5, reply.seconds


def test_a_body_at_the_minimum_rate_passes(api: Api) -> None:
    # ~400 B/s over three windows: slow, but fast enough.
    body = json.dumps({"username": "slow_but_fine", "email": "nope"}).encode().ljust(1200)
    head = request(
        "POST", REGISTER, "Content-Type: application/json", f"Content-Length: {len(body)}"
    )
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    reply = exchange(api, head, pieces, every=0.25)
    reply.envelope(422, "validation_error")  # it reached the app, which judged it


def test_a_chunked_body_over_the_cap_is_413(api: Api) -> None:
    chunk = b"[" + b"0," * 300_000 + b"0]"  # 600 KB, twice: over the 1 MiB cap
    head = (
        f"POST {REGISTER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    reply = exchange(api, head + framed, [framed, b"0\r\n\r\n"])
    error = reply.envelope(413, "payload_too_large")
    assert "larger than" in str(error["message"])


def test_a_deep_json_body_is_413(api: Api) -> None:
    reply = exchange(api, request("POST", REGISTER, body=b"[" * 100_000 + b"]" * 100_000))
    error = reply.envelope(413, "payload_too_large")
    assert "deeper than 16" in str(error["message"])


def test_a_json_body_with_too_many_keys_is_413_and_quick(api: Api) -> None:
    # The attacker's body: hundreds of thousands of unknown keys (once ~10 s and a 44 MB 422).
    body = json.dumps({f"k{i}": 0 for i in range(80_000)}).encode()  # 1 MB
    reply = exchange(api, request("POST", REGISTER, body=body))
    error = reply.envelope(413, "payload_too_large")
    assert "more than 3000 values" in str(error["message"])
    assert reply.seconds < 5, reply.seconds
    assert len(reply.body) < 1024


def test_validation_errors_are_capped_and_small(api: Api) -> None:
    # Under the value cap, but 1 500 unknown keys, each long and with characters JSON escapes.
    keys = {f"{i}-{ESCAPED * 60}": 0 for i in range(1500)}
    reply = exchange(
        api, request("POST", REGISTER, body=json.dumps(keys, ensure_ascii=False).encode())
    )
    error = reply.envelope(422, "validation_error")
    details = error["details"]
    assert isinstance(details, list)
    assert len(details) == 21
    assert details[-1]["type"] == "too_many_errors"
    assert details[-1]["field"] is None
    dropped = int(details[-1]["message"].split()[0])
    assert dropped >= 1500 - 20  # and the missing fields, if they came first
    assert len(reply.body) < 8 * 1024, len(reply.body)
    for detail in details[:-1]:  # inputs clipped, never echoed whole
        assert len(detail["field"].encode()) <= 120
        assert "\x01" not in detail["field"]


def test_the_connection_cap_answers_503_and_frees_closed_slots(api: Api) -> None:
    held = [socket.create_connection(("127.0.0.1", api.port), timeout=5) for _ in range(12)]
    try:
        for connection in held:  # each begins a request: none is idle, all count
            connection.sendall(b"GET /health HTTP/1.1\r\n")
        reply = exchange(api, request("GET", "/health"))
        error = reply.envelope(503, "service_unavailable")
        assert "connection limit" in str(error["message"])
        assert reply.headers["retry-after"] == "2"
        assert reply.closed
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 5
    while (reply := exchange(api, request("GET", "/health"))).status != 200:
        assert time.monotonic() < deadline, "closed connections kept their slots"
        time.sleep(0.05)  # polling for the server to see the closes


def test_idle_keepalive_connections_make_room(api: Api) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            held.append(connection)
            connection.sendall(request("GET", "/health"))
            reply = read_reply(connection, time.monotonic(), probe_close=False)
            assert reply.status == 200  # then the connection idles, kept alive
        reply = exchange(api, request("GET", "/health"))
        assert reply.status == 200  # an idle one was closed for it, no 503
        # What the server closed reads EOF. A selector, not select(): in a long test session
        # the descriptors here may be numbered past select()'s limit of 1024.
        with selectors.DefaultSelector() as selector:
            for connection in held:
                selector.register(connection, selectors.EVENT_READ)
            readable = [cast(socket.socket, key.fileobj) for key, _ in selector.select(1.0)]
        assert [connection.recv(1) for connection in readable] == [b""]
    finally:
        for connection in held:
            connection.close()


def test_websocket_upgrades_still_work(api: Api) -> None:
    handshake = request(
        "GET", "/ws/notifications", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as connection:
        connection.sendall(handshake)
        assert connection.recv(4096).startswith(b"HTTP/1.1 101")  # then it asks for a token
