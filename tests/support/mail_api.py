"""A local stand-in for a third-party transactional-mail HTTP API (the shape Resend and its
kind accept), for the HTTP delivery backend (app/email/http_backend.py). It runs in the test
process on a loopback port, so a real worker posts real HTTP requests to it.

It checks the bearer key (401 otherwise), records every post, and keeps one delivered mail per
`Idempotency-Key`, as the providers that honour it do. Recipients steer it: `flaky...@` gets
503 every time, `flakyonce...@` only on its first post, `reject...@` gets 422 with a body that
echoes the request's Authorization header (a careless provider: the key must not reach logs or
the outbox row), `slow...@` is answered after SLOW_SECONDS.
"""

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "re_test_0123456789abcdef-secret"
SLOW_SECONDS = 1.0


@dataclass
class Posted:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def recipient(self) -> str:
        to: list[str] = self.body["to"]
        return to[0]


@dataclass
class MailApi:
    """What the server saw, thread-safe (the server answers on its own threads)."""

    api_key: str = API_KEY
    posts: list[Posted] = field(default_factory=list)
    delivered: dict[str, Posted] = field(default_factory=dict)  # by Idempotency-Key
    attempts: Counter[str] = field(default_factory=Counter)  # by recipient
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"message": "invalid API key"}
        posted = Posted(headers, body)
        recipient = posted.recipient
        key = headers.get("idempotency-key", uuid.uuid4().hex)
        with self.lock:
            self.posts.append(posted)
            self.attempts[recipient] += 1
            attempt = self.attempts[recipient]
        if recipient.startswith("slow"):
            time.sleep(SLOW_SECONDS)
        if recipient.startswith("reject"):
            return 422, {"message": f"invalid recipient (request: {headers['authorization']})"}
        if recipient.startswith("flakyonce") and attempt == 1:
            return 503, {"message": "try again later"}
        if recipient.startswith("flaky") and not recipient.startswith("flakyonce"):
            return 503, {"message": "try again later"}
        with self.lock:
            self.delivered.setdefault(key, posted)
        return 200, {"id": key}

    def to(self, address: str) -> list[Posted]:
        with self.lock:
            return [p for p in self.delivered.values() if p.recipient == address]


class MailApiServer:
    def __init__(self, api: MailApi | None = None) -> None:
        self.api = api or MailApi()
        api_ref = self.api

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, answer = api_ref.answer(headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: pytest shows what matters

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/emails"

    def settings(self) -> dict[str, str]:
        return {
            "EMAIL_BACKEND": "http",
            "EMAIL_HTTP_URL": self.url,
            "EMAIL_HTTP_API_KEY": self.api.api_key,
        }

    def start(self) -> "MailApiServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
