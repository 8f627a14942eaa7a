"""The production nginx config, unchanged, in front of two real API processes: the edge layer
of issue 11 without a container engine.

Topology (tests/deploy/netns.py): namespaces edge (nginx), api1 and api2 (`app api` on :8000)
and jobs (worker and beat) on a private bridge; PostgreSQL and Redis on the bridge's host
address. /etc/netns/<edge>/hosts names api1/api2 and /etc/netns/<edge>/nginx stands for
/etc/nginx, so deploy/nginx is used as shipped. The test process is the client, in the host
namespace, talking TLS to the edge's address as `app.test` (a certificate from a throwaway CA).

One stack for the module; the tests that break something (kill, stop, partition) come last
and put back what they broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.cli import _ensure_superuser_from_settings as ensure_superuser
from app.core.config import Settings
from app.core.errors import ErrorResponse
from app.core.migrate import upgrade_to_head
from app.realtime.leases import KEY_PREFIX
from tests.deploy.netns import (
    BridgedPostgres,
    BridgedRedis,
    Daemon,
    Namespace,
    Topology,
    require_root_and_tools,
    run,
    sweep_leftovers,
    wait_for,
)
from tests.support.certs import make_ca
from tests.support.servers import ServerUnavailable, require_server
from tests.support.settings import TEST_SECRET
from tests.support.workers import subprocess_env

pytestmark = pytest.mark.postgres

APP = str(Path(sys.executable).parent / "app")
NGINX = shutil.which("nginx") or "nginx"
REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"
HOSTNAME = "app.test"
PUBLISHED_PORT = 8443  # DNATed to 443 inside the edge, like a port published by an engine
API_PORT = 8000
PASSWORD = "Edge-password-1"
ADMIN = "edgeadmin"
GENEROUS = "100000/minute"
RESET_LIMIT = 4  # RATE_LIMIT_PASSWORD_RESET per client address, for the shared-limit test
START_DEADLINE = 60.0
DEADLINE = 15.0
UPLOAD_BYTES = 27 * 1024 * 1024
PARTITION_SECONDS = 15.0  # longest the partition test keeps api1 cut off: > fail_timeout + connect
SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)


# -- clients -------------------------------------------------------------------------------


class _ToEdge(httpx.HTTPTransport):
    """Connect to the edge's address while the URL, Host and SNI say app.test: a resolver
    that knows one name, without touching the machine's /etc/hosts."""

    def __init__(self, edge: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge = edge

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": request.url.host}
        request.url = request.url.copy_with(host=self.edge)
        return super().handle_request(request)


class _AsyncToEdge(httpx.AsyncHTTPTransport):
    def __init__(self, edge: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge = edge

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": request.url.host}
        request.url = request.url.copy_with(host=self.edge)
        return await super().handle_async_request(request)


@dataclass
class Stack:
    topo: Topology
    edge: Namespace
    api_ns: dict[str, Namespace]
    apis: dict[str, Daemon]
    api_env: dict[str, dict[str, str]]
    nginx: Daemon
    worker: Daemon
    beat: Daemon
    ca_file: Path
    redis_url: str  # loopback, for the test's own look-ups
    admin_token: str = ""

    def tls(self) -> ssl.SSLContext:
        """A context per client: httpx sets ALPN (h2) on the one it is given, and a WebSocket
        client offered h2 by nginx would then get HTTP/2 frames back."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def base(self) -> str:
        return f"https://{HOSTNAME}"

    def client(
        self, *, port: int = 443, local_address: str | None = None, http2: bool = True
    ) -> httpx.Client:
        base = self.base if port == 443 else f"{self.base}:{port}"
        transport = _ToEdge(
            self.edge.address, verify=self.tls(), http2=http2, local_address=local_address
        )
        return httpx.Client(base_url=base, transport=transport, timeout=DEADLINE)

    def async_client(self) -> httpx.AsyncClient:
        transport = _AsyncToEdge(self.edge.address, verify=self.tls(), http2=True)
        return httpx.AsyncClient(base_url=self.base, transport=transport, timeout=DEADLINE)

    def websocket(self, path: str, token: str) -> Any:
        """A WebSocket through the edge as a browser on https://app.test would open it."""
        return connect(
            f"wss://{HOSTNAME}{path}",
            host=self.edge.address,
            port=443,
            ssl=self.tls(),
            server_hostname=HOSTNAME,
            origin=f"https://{HOSTNAME}",  # type: ignore[arg-type]
            subprotocols=["bearer", token],  # type: ignore[list-item]
            open_timeout=DEADLINE,
        )

    def start_api(self, name: str) -> Daemon:
        daemon = self.topo.daemon(
            name,
            f"{name}-{len(self.topo.daemons)}",
            [APP, "api", "--host", "0.0.0.0", "--port", str(API_PORT)],
            self.api_env[name],
        )
        self.apis[name] = daemon
        return daemon

    def wait_api(self, name: str, deadline: float) -> None:
        daemon, address = self.apis[name], self.api_ns[name].address

        def ready() -> bool:
            if not daemon.alive():
                raise AssertionError(f"API {name} died while starting\n{daemon.describe()}")
            with contextlib.suppress(httpx.TransportError):
                url = f"http://{address}:{API_PORT}/health"
                return httpx.get(url, headers={"Host": HOSTNAME}, timeout=1).status_code == 200
            return False

        wait_for(ready, timeout=deadline - time.monotonic(), what=f"API {name} ready")

    def restart_api(self, name: str, *, through_edge: bool = True) -> None:
        """A fresh process in the same namespace; by default served through nginx again before
        returning (nginx may have marked the dead one failed for a while)."""
        old = self.apis[name]
        old.stop(signal.SIGKILL)
        self.start_api(name)
        self.wait_api(name, time.monotonic() + START_DEADLINE)
        if not through_edge:
            return
        with self.client() as client:

            def served_by_it() -> bool:
                before = len(access_lines(self.apis[name]))
                client.get("/api/v1/users/me", headers=bearer(self.admin_token))
                return len(access_lines(self.apis[name])) > before

            wait_for(served_by_it, timeout=DEADLINE, what=f"nginx sends to {name} again")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    events = []
    for line in daemon.text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def access_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in log_events(daemon) if e.get("event") in ("request", "websocket")]


def account(client: httpx.Client, prefix: str = "edge") -> tuple[int, str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD,
            "password_confirm": PASSWORD}  # fmt: skip
    registered = client.post("/api/v1/auth/register", json=body)
    assert registered.status_code == 202, registered.text
    token = login(client, name)
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    return int(me.json()["id"]), token


def login(client: httpx.Client, username: str) -> str:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _access_line(stack: Stack, request_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [
            line
            for api in stack.apis.values()
            for line in access_lines(api)
            if line.get("request_id") == request_id
        ]
        return bool(found)

    wait_for(logged, timeout=5, what=f"access log line of {request_id}")
    return found[0]


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def joined(ws: ClientConnection, user_id: int) -> None:
    """Our own join frame: the sign that the connection is subscribed to the room."""
    while (await next_of(ws, "join"))["user"]["id"] != user_id:
        pass


def setting_seconds(name: str) -> float:
    """A duration directive of the shipped config (the first one found), in seconds."""
    for path in (NGINX_DIR / "proxy_params.conf", NGINX_DIR / "nginx.conf"):
        found = re.search(rf"^\s*{name}\s+(\d+)(ms|s)?\s*;", path.read_text(), re.MULTILINE)
        if found:
            value = float(found.group(1))
            return value / 1000 if found.group(2) == "ms" else value
    raise AssertionError(f"{name} is not set in deploy/nginx")


# -- the stack -----------------------------------------------------------------------------


def _nginx_etc(topo: Topology, tmp: Path) -> None:
    """/etc/hosts and /etc/nginx as the edge namespace sees them."""
    etc = topo.etc_dir("edge")
    hosts = ["127.0.0.1 localhost"]
    hosts += [f"{topo.namespaces[n].address} {n}" for n in ("api1", "api2")]
    (etc / "hosts").write_text("\n".join(hosts) + "\n")
    shutil.copytree(NGINX_DIR, etc / "nginx")
    ca = make_ca(tmp, "edge test CA")
    cert, key = ca.issue(tmp, "tls", dns_names=[HOSTNAME])
    (etc / "nginx" / "certs").mkdir(exist_ok=True)
    shutil.copy(cert, etc / "nginx" / "certs" / "tls.crt")
    shutil.copy(key, etc / "nginx" / "certs" / "tls.key")
    shutil.copy(ca.path, tmp / "trusted-ca.pem")


def _settings_env(
    data_dir: Path, database_url: str, redis_url: str, edge: str, **extra: str
) -> dict[str, str]:
    return subprocess_env(
        {
            "ENVIRONMENT": "production",
            "SECRET_KEY": TEST_SECRET,
            "APP_DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "TRUSTED_PROXIES": edge,
            "ALLOWED_HOSTS": HOSTNAME,
            "LOG_FORMAT": "json",
            "RATE_LIMIT_DEFAULT": GENEROUS,
            "RATE_LIMIT_LOGIN": GENEROUS,
            "RATE_LIMIT_LOGIN_ACCOUNT": GENEROUS,
            "RATE_LIMIT_REGISTER": GENEROUS,
            "RATE_LIMIT_PASSWORD_RESET": f"{RESET_LIMIT}/hour",
            "PASSWORD_HASH_CONCURRENCY": "1",
            "SHUTDOWN_DRAIN_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",  # log lines are read while the processes run
            **extra,
        }
    )


def _migrate(database_url: str, data_dir: Path) -> None:
    settings = Settings(
        _env_file=None,
        secret_key=TEST_SECRET,
        app_data_dir=data_dir,
        database_url=database_url,
        first_superuser_username=ADMIN,
        first_superuser_email=f"{ADMIN}@example.com",
        first_superuser_password=PASSWORD,
    )
    upgrade_to_head(settings)
    ensure_superuser(settings)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root_and_tools()
    sweep_leftovers()
    tmp = tmp_path_factory.mktemp("edge")
    topo = Topology(tmp)
    pg: BridgedPostgres | None = None
    rds: BridgedRedis | None = None
    try:
        topo.up(["edge", "api1", "api2", "jobs"])
        pg = BridgedPostgres(topo.host_address, str(topo.network))
        rds = BridgedRedis(topo.host_address)
        try:
            pg.start()
            rds.start()
        except ServerUnavailable as exc:
            require_server(f"PostgreSQL/Redis not available: {exc}")
        pg.create_database("edge")
        database_url, redis_url = pg.bridged_url("edge"), rds.bridged_url()
        edge = topo.namespaces["edge"].address

        envs = {
            role: _settings_env(tmp / role, database_url, redis_url, edge)
            for role in ("api1", "api2", "worker", "beat")
        }
        _nginx_etc(topo, tmp)
        edge_ns = topo.namespaces["edge"]
        checked = run(edge_ns.argv(NGINX, "-t"), check=False)
        assert checked.returncode == 0, f"nginx -t in the edge namespace:\n{checked.stderr}"
        # A port published by an engine: clients use :8443, nginx listens on 443.
        run(edge_ns.argv("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport",
                         str(PUBLISHED_PORT), "-j", "REDIRECT", "--to-ports", "443"))  # fmt: skip
        nginx = topo.daemon(
            "edge",
            "nginx",
            [NGINX, "-g", f"pid {tmp / 'nginx.pid'}; daemon off;"],
            {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        s = Stack(
            topo=topo,
            edge=edge_ns,
            api_ns={n: topo.namespaces[n] for n in ("api1", "api2")},
            apis={},
            api_env={n: envs[n] for n in ("api1", "api2")},
            nginx=nginx,
            worker=topo.daemon("jobs", "worker", [APP, "worker", "-c", "1"], envs["worker"]),
            beat=topo.daemon("jobs", "beat", [APP, "beat"], envs["beat"]),
            ca_file=tmp / "trusted-ca.pem",
            redis_url=rds.loopback_url(),
        )
        deadline = time.monotonic() + START_DEADLINE
        s.start_api("api1")
        s.start_api("api2")
        # Cold starts of four Python processes take most of the budget: migrate meanwhile
        # (in this process, already warm), as the one-shot `migrate` service would. Nothing
        # is ready before the database is migrated.
        _migrate(pg.url("edge"), tmp / "migrate")
        s.wait_api("api1", deadline)
        s.wait_api("api2", deadline)

        def edge_listens() -> bool:
            assert nginx.alive(), nginx.describe()
            with contextlib.suppress(OSError), socket.create_connection((edge, 443), 0.5):
                return True
            return False

        wait_for(edge_listens, timeout=DEADLINE, what="nginx listening")
        # `ip netns exec` execs nginx: the PID we hold is the master's, the one we stop.
        assert (tmp / "nginx.pid").read_text().strip() == str(nginx.pid)
        wait_for(
            lambda: " ready." in s.worker.text() or not s.worker.alive(),
            timeout=deadline - time.monotonic(),
            what="worker ready",
        )
        assert s.worker.alive(), s.worker.describe()
        with s.client() as client:
            s.admin_token = login(client, ADMIN)
        yield s
    finally:
        problems = topo.down()
        for server in (rds, pg):
            if server is not None:
                server.stop()
        assert not problems, problems


# -- through the edge ----------------------------------------------------------------------


def test_register_login_and_me_over_http2(stack: Stack) -> None:
    with stack.client() as client:
        user_id, token = account(client)
        me = client.get("/api/v1/users/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user_id
    assert me.http_version == "HTTP/2"


def test_plain_http_is_redirected_to_https_with_308(stack: Stack) -> None:
    with httpx.Client(transport=_ToEdge(stack.edge.address), timeout=DEADLINE) as client:
        response = client.get(f"http://{HOSTNAME}/api/v1/users/me?page=2")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://{HOSTNAME}/api/v1/users/me?page=2"


def test_a_trailing_slash_redirect_stays_https_with_its_port(stack: Stack) -> None:
    """Through a published port (8443 -> 443): the app must build the redirect from
    X-Forwarded-Proto and X-Forwarded-Host, not from its own view of the request."""
    with stack.client(port=PUBLISHED_PORT) as client:
        response = client.get("/api/v1/tasks", headers=bearer(stack.admin_token))
    assert response.status_code in (307, 308), response.text
    assert response.headers["location"] == f"https://{HOSTNAME}:{PUBLISHED_PORT}/api/v1/tasks/"


def test_each_security_header_once_and_metrics_hidden(stack: Stack) -> None:
    with stack.client() as client:
        answers = [
            client.get("/api/v1/users/me", headers=bearer(stack.admin_token)),
            client.get("/api/v1/no-such-route"),
            client.get("/health"),
        ]
        metrics = client.get("/metrics")
    for response in answers:
        for name in SECURITY_HEADERS:
            values = response.headers.get_list(name)
            assert len(values) == 1, (response.request.url.path, name, values)
    assert metrics.status_code == 404, metrics.text[:200]
    assert "http_requests" not in metrics.text


def test_an_oversized_upload_gets_413_in_the_json_envelope(stack: Stack) -> None:
    """nginx refuses it by its Content-Length, before the app sees a byte, and answers in the
    app's own envelope. HTTP/1.1: httpx's HTTP/2 cannot read an answer before it has sent the
    whole body, which nginx (rightly) stops accepting."""
    headers = {**bearer(stack.admin_token), "Content-Type": "multipart/form-data; boundary=x"}
    with stack.client(http2=False) as client:
        response = client.post("/api/v1/files", content=b"\0" * UPLOAD_BYTES, headers=headers)
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"].split(";")[0] == "application/json"
    error = ErrorResponse.model_validate(response.json()).error
    assert (error.status, error.code) == (413, "payload_too_large")
    assert error.path == "/api/v1/files"
    assert len(response.headers.get_list("strict-transport-security")) == 1


def test_a_forged_x_forwarded_for_is_ignored(stack: Stack) -> None:
    """The edge overwrites X-Forwarded-For with its peer; the API trusts only the edge, so it
    sees this client's address. X-Request-ID goes through both ways."""
    request_id = f"edge-forged-{secrets.token_hex(4)}"
    headers = {
        **bearer(stack.admin_token),
        "X-Forwarded-For": "203.0.113.7",
        "X-Real-IP": "203.0.113.7",
        "X-Request-ID": request_id,
    }
    with stack.client() as client:
        response = client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    line = _access_line(stack, request_id)
    assert line["client"] == stack.topo.host_address, line


def test_both_apis_serve_and_upstream_connections_are_reused(stack: Stack) -> None:
    requests = 40
    opened_before = sum(ns.passive_opens() for ns in stack.api_ns.values())
    served_before = {name: len(access_lines(api)) for name, api in stack.apis.items()}
    with stack.client() as client:
        for _ in range(requests):
            response = client.get("/api/v1/users/me", headers=bearer(stack.admin_token))
            assert response.status_code == 200, response.text

    def served() -> dict[str, int]:
        return {n: len(access_lines(a)) - served_before[n] for n, a in stack.apis.items()}

    wait_for(lambda: sum(served().values()) >= requests, timeout=5, what="access log lines")
    assert all(count > 0 for count in served().values()), served()
    # Accepted TCP connections in the API namespaces: the kernel's own count. Without
    # upstream keep-alive it would be one per request.
    opened = sum(ns.passive_opens() for ns in stack.api_ns.values()) - opened_before
    assert opened <= 4, f"{opened} upstream connections for {requests} requests"


def test_the_rate_limit_is_shared_by_both_apis(stack: Stack) -> None:
    """RATE_LIMIT_PASSWORD_RESET is 4/hour per client address: 4 pass, then 429, although
    nginx spreads the requests over two processes (each alone would allow 4). The client has
    an address of its own, so no other test's bucket is touched."""
    address = stack.topo.add_host_address(200)
    left = 3600 - time.time() % 3600
    if left < 10:  # fixed windows: a count straddling the hour would start over
        time.sleep(left + 0.1)
    with stack.client(local_address=address) as client:
        statuses = [
            client.post(
                "/api/v1/auth/password-reset/request",
                json={"email": f"nobody-{i}-{secrets.token_hex(3)}@example.com"},
            ).status_code
            for i in range(2 * RESET_LIMIT)
        ]
    assert statuses == [202] * RESET_LIMIT + [429] * RESET_LIMIT

    def served_from(api: Daemon) -> int:
        return sum(
            1
            for line in access_lines(api)
            if line.get("route") == "/api/v1/auth/password-reset/request"
            and line.get("client") == address
        )

    wait_for(
        lambda: sum(served_from(a) for a in stack.apis.values()) >= 2 * RESET_LIMIT,
        timeout=5,
        what="access log lines",
    )
    assert all(served_from(api) > 0 for api in stack.apis.values())


async def test_websocket_chat_both_ways_keeps_host_and_client_ip(stack: Stack) -> None:
    """ALLOWED_HOSTS=app.test and the Origin check (Origin must match Host) refuse the
    handshake unless nginx passes the Host on; the app logs the client's address."""
    with stack.client() as client:
        alice_id, alice = account(client)
        bob_id, bob = account(client)
    room = f"edge_{secrets.token_hex(4)}"
    async with (
        stack.websocket(f"/ws/chat/{room}", alice) as on_alice,
        stack.websocket(f"/ws/chat/{room}", bob) as on_bob,
    ):
        await joined(on_alice, alice_id)
        await joined(on_bob, bob_id)
        await on_alice.send(json.dumps({"type": "message", "content": "from alice"}))
        assert (await next_of(on_bob, "message"))["content"] == "from alice"
        await on_bob.send(json.dumps({"type": "message", "content": "from bob"}))
        assert (await next_of(on_alice, "message"))["content"] == "from alice"
        assert (await next_of(on_alice, "message"))["content"] == "from bob"

    def socket_lines() -> list[dict[str, Any]]:
        return [
            line
            for api in stack.apis.values()
            for line in access_lines(api)
            if line["event"] == "websocket" and line.get("user_id") in (alice_id, bob_id)
        ]

    await asyncio.to_thread(
        wait_for, lambda: len(socket_lines()) == 2, timeout=5, what="websocket log lines"
    )
    for line in socket_lines():
        assert line["status"] == 101, line
        assert line["client"] == stack.topo.host_address, line


async def test_an_sse_event_arrives_within_a_second_of_its_publish(stack: Stack) -> None:
    with stack.client() as setup:
        _, token = account(setup)
    title = f"edge {secrets.token_hex(4)}"
    async with (
        stack.async_client() as client,
        client.stream("GET", "/api/v1/notifications/stream", headers=bearer(token)) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        async with asyncio.timeout(DEADLINE):
            assert await anext(lines) == ": connected"
        published = time.monotonic()
        created = await client.post(
            "/api/v1/notifications/broadcast",
            json={"title": title},
            headers=bearer(stack.admin_token),
        )
        assert created.status_code == 201, created.text
        async with asyncio.timeout(DEADLINE):
            async for line in lines:
                if line.startswith("data:") and title in line:
                    break
        arrived = time.monotonic() - published
    assert arrived < 1.0, f"the event took {arrived:.2f}s"


def test_a_job_queued_through_the_edge_completes_on_the_worker(stack: Stack) -> None:
    with stack.client() as client:
        accepted = client.post("/api/v1/email/test", headers=bearer(stack.admin_token))
        assert accepted.status_code == 202, accepted.text
        status_url = accepted.json()["status_url"]

        def finished() -> bool:
            task = client.get(status_url, headers=bearer(stack.admin_token)).json()
            return task["state"] in ("SUCCESS", "FAILURE", "REVOKED")

        wait_for(finished, timeout=DEADLINE, what="the test mail's task", interval=0.1)
        task = client.get(status_url, headers=bearer(stack.admin_token)).json()
    assert task["state"] == "SUCCESS", task
    assert task["id"] in stack.worker.text()  # it ran there, not in some other process


# -- destructive, last: each puts back what it broke ---------------------------------------


async def test_kill_9_of_one_api_under_load_loses_no_idempotent_request(stack: Stack) -> None:
    """nginx retries a GET that died with its upstream on the other one."""
    total, concurrency, kill_at = 120, 8, 30
    victim = stack.apis["api1"]
    served_before = {name: len(access_lines(api)) for name, api in stack.apis.items()}
    statuses: list[int] = []
    gate = asyncio.Semaphore(concurrency)
    try:
        async with stack.async_client() as client:

            async def one(index: int) -> None:
                async with gate:
                    if index == kill_at:
                        victim.send(signal.SIGKILL)  # with kill_at - 1 .. requests in flight
                    response = await client.get(
                        "/api/v1/users/me", headers=bearer(stack.admin_token)
                    )
                    statuses.append(response.status_code)

            async with asyncio.timeout(30):
                await asyncio.gather(*(one(i) for i in range(total)))
        assert await asyncio.to_thread(victim.wait, 5) == -signal.SIGKILL
        assert statuses == [200] * total, sorted(set(statuses))
        served = {n: len(access_lines(a)) - served_before[n] for n, a in stack.apis.items()}
        assert served["api1"] > 0, served  # it did take part before it died
    finally:
        await asyncio.to_thread(stack.restart_api, "api1")


def _serving_pid(redis_url: str, user_id: int) -> int:
    """Which process holds the user's one connection: its lease names host:pid:..."""
    with redis.Redis.from_url(redis_url) as client:
        members = client.zrange(f"{KEY_PREFIX}{user_id}", 0, -1)
    assert len(members) == 1, members
    return int(members[0].decode().split(":")[1])


@dataclass
class ChatClient:
    user_id: int
    token: str
    ws: ClientConnection
    api: str
    last_id: int = 0


async def _resume(stack: Stack, room: str, chat: ChatClient) -> list[dict[str, Any]]:
    """Reconnect through the edge after `last_id`, as a client does after a 1001: a process
    still draining may take the handshake and say 1001 again, so try until one stays. The
    messages missed come first, before our own join: they are returned."""
    async with asyncio.timeout(DEADLINE):
        while True:
            chat.ws = await stack.websocket(f"/ws/chat/{room}?last_id={chat.last_id}", chat.token)
            frames: list[dict[str, Any]] = []
            try:
                while True:
                    frame = json.loads(await chat.ws.recv())
                    if frame["type"] == "join" and frame["user"]["id"] == chat.user_id:
                        return [f for f in frames if f["type"] == "message"]
                    frames.append(frame)
            except ConnectionClosed:
                assert chat.ws.close_code == 1001, chat.ws.close_code
                await asyncio.sleep(0.1)  # a client's back-off before it tries again


async def test_sigterm_closes_websockets_with_1001_and_clients_resume_on_the_other(
    stack: Stack,
) -> None:
    room = f"edge_{secrets.token_hex(4)}"
    pids = {api.pid: name for name, api in stack.apis.items()}
    chats: list[ChatClient] = []
    victim = stack.apis["api1"]
    try:
        with stack.client() as client:
            # One user per connection, so each connection's lease names its process; open
            # until both processes hold some (round robin makes that quick).
            for _ in range(8):
                user_id, token = account(client, "rt")
                ws = await stack.websocket(f"/ws/chat/{room}", token)
                await joined(ws, user_id)
                pid = _serving_pid(stack.redis_url, user_id)
                chats.append(ChatClient(user_id, token, ws, pids[pid]))
                if {c.api for c in chats} == {"api1", "api2"}:
                    break
        assert {c.api for c in chats} == {"api1", "api2"}, [c.api for c in chats]
        going = [c for c in chats if c.api == "api1"]
        staying = [c for c in chats if c.api == "api2"]
        sender = staying[0].ws

        await sender.send(json.dumps({"type": "message", "content": "before"}))
        for chat in chats:
            chat.last_id = (await next_of(chat.ws, "message"))["id"]

        victim.send(signal.SIGTERM)
        for chat in going:
            async with asyncio.timeout(DEADLINE):
                await chat.ws.wait_closed()
            assert chat.ws.close_code == 1001, (chat.ws.close_code, chat.ws.close_reason)
        for chat in staying:  # the other process's sockets are untouched
            await chat.ws.send('{"type": "ping"}')
            await next_of(chat.ws, "pong")

        await sender.send(json.dumps({"type": "message", "content": "while away 1"}))
        await sender.send(json.dumps({"type": "message", "content": "while away 2"}))
        for chat in going:
            messages = await _resume(stack, room, chat)
            chat.api = pids[_serving_pid(stack.redis_url, chat.user_id)]
            assert chat.api == "api2"
            while len(messages) < 2:  # stored after our replay query: they come live
                messages.append(await next_of(chat.ws, "message"))
            assert [m["content"] for m in messages] == ["while away 1", "while away 2"]
            assert messages[0]["id"] > chat.last_id
        code = await asyncio.to_thread(victim.wait, DEADLINE)
        assert code in (0, -signal.SIGTERM), victim.describe()
    finally:
        for chat in chats:
            await chat.ws.close()
        # Back in the pool without traffic through nginx: the partition test needs an API
        # that nginx has no idle connection to (see there).
        await asyncio.to_thread(stack.restart_api, "api1", through_edge=False)


def _established(stack: Stack, api: str) -> int:
    address = stack.api_ns[api].address
    out = run(stack.edge.argv("ss", "-Htn", "state", "established", "dst", f"{address}:{API_PORT}"))
    return len(out.stdout.splitlines())


async def test_a_partitioned_api_gives_bounded_errors_and_latency(stack: Stack) -> None:
    """Link down in api1's namespace: nginx's connects to it time out after
    proxy_connect_timeout and the GET goes to api2. No request fails; none takes much longer
    than one connect timeout.

    Requests on an idle keep-alive connection to the partitioned API would instead wait for
    proxy_read_timeout (nothing answers, nothing refuses; 15 s in deploy/nginx, after which an
    idempotent request is retried on api2): this test starts with no such connection
    (checked), which is the case the connect timeout bounds."""
    connect_timeout = setting_seconds("proxy_connect_timeout")
    bound = connect_timeout + 1.5
    assert _established(stack, "api1") == 0
    api1 = stack.api_ns["api1"]
    log_before = len(stack.nginx.text())
    latencies: list[float] = []
    statuses: list[int] = []
    api1.link(up=False)
    try:
        async with stack.async_client() as client:

            async def one() -> None:
                started = time.monotonic()
                response = await client.get("/api/v1/users/me", headers=bearer(stack.admin_token))
                latencies.append(time.monotonic() - started)
                statuses.append(response.status_code)

            # nginx may still hold api1 as failed from the last test (its SIGTERM): for
            # fail_timeout (10 s, nginx's default) no request goes there, however many are sent.
            # So the loop is bounded in time, not count (CI once sent its 80 requests within that
            # window and never reached api1), and paced: what is awaited is real time passing.
            def tried_api1() -> bool:
                return f"{api1.address}:{API_PORT}" in stack.nginx.text()[log_before:]

            started = time.monotonic()
            async with asyncio.timeout(PARTITION_SECONDS + 2 * bound):
                while time.monotonic() - started < PARTITION_SECONDS:
                    await asyncio.gather(*(one() for _ in range(4)))
                    if tried_api1() and len(statuses) >= 12:
                        break
                    await asyncio.sleep(0.1)
    finally:
        api1.link(up=True)
    errors = [s for s in statuses if s != 200]
    assert not errors, statuses
    assert max(latencies) <= bound, sorted(latencies)[-5:]
    tried = stack.nginx.text()[log_before:]
    assert f'upstream: "http://{api1.address}:{API_PORT}' in tried, tried[-2000:]
    assert "timed out" in tried, tried[-2000:]
