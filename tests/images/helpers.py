"""Real images and a real HTTP server that serves them (and misbehaves on request)."""

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from tests.support.processes import free_port

HOLD_SECONDS = 30.0  # the longest a "slow" response holds its connection (ended at shutdown)


def image_bytes(
    width: int = 64, height: int = 48, *, fmt: str = "PNG", mode: str = "RGB", **save: Any
) -> bytes:
    """A real image: a gradient, so resampling and filters have something to work on."""
    image = Image.linear_gradient("L").resize((width, height)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def open_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        copy = image.copy()
        copy.format = image.format  # the copy is detached from the file, format included
        return copy


@dataclass
class Upstream:
    """What the handler serves; shared by the servers on each address."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (Host header, path)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    png = image_bytes(80, 60)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, **extra: str) -> None:
            self.send_response(status)
            headers = {"Content-Type": "image/png", "Content-Length": str(len(body))}
            headers.update({name.replace("_", "-"): value for name, value in extra.items()})
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            upstream.requests.append((self.headers.get("Host", ""), self.path))
            path, _, query = self.path.partition("?")
            if path == "/image.png":
                self._send(200, png)
            elif path == "/redirect":  # ?to=<absolute or relative URL>
                self._send(302, b"", Location=query.removeprefix("to="))
            elif path == "/loop":
                self._send(302, b"", Location="/loop")
            elif path == "/text":
                self._send(200, b"hello", Content_Type="text/plain")
            elif path == "/gzip":
                self._send(200, png, Content_Encoding="gzip")
            elif path == "/big":  # declares more than any cap in the tests
                self._send(200, b"", Content_Length=str(100 * 1024 * 1024))
            elif path == "/big-undeclared":  # no Content-Length, then more than the cap
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(png * 5000)
            elif path == "/slow":  # headers, then nothing until the server stops
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                upstream.stop.wait(HOLD_SECONDS)
            else:
                self._send(404, b"", Content_Type="text/plain")

    return Handler


@contextmanager
def serving(*hosts: str) -> Iterator[Upstream]:
    """One upstream on every address in `hosts`, all on the same port."""
    upstream = Upstream(port=free_port())
    servers = [ThreadingHTTPServer((host, upstream.port), _handler(upstream)) for host in hosts]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield upstream
    finally:
        upstream.stop.set()
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)
