"""The pinned connection in `safe_fetch` still does TLS properly: SNI and certificate checks.

`safe_fetch` connects to the address it vetted, not to a second DNS answer, so the request URL
it sends carries an IP literal. Left alone, the TLS layer would then send no SNI (IP literals
are never sent as SNI) and check the certificate against that IP, which no real certificate
for a named host matches: either every https fetch breaks, or someone "fixes" it by turning
verification off. `pinned_request` avoids both by handing httpcore the original hostname as the
`sni_hostname` extension. The unit test in test_safe_fetch.py only looks at the request object;
these tests prove the whole path against a real TLS server:

- the server receives SNI "localhost" and the fetch succeeds with a certificate for localhost;
- a certificate for another name is rejected (verification is still on after pinning);
- a certificate from an untrusted CA is rejected (the client's trust store is still used).

The certificates come from a throwaway CA made here. The localhost leaf deliberately has no IP
SAN: if it named 127.0.0.1, a fetch that checked the certificate against the pinned IP would
pass too, and the hostname check would go untested.
"""

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.safe_fetch import FetchFailed, parse_networks, safe_fetch
from tests.support.certs import make_ca

# "localhost" is loopback, which safe_fetch refuses unless a test opens it; both families,
# because which one localhost resolves to (and which safe_fetch picks) depends on the machine.
ALLOW_LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])
BODY = b"\x89PNG\r\n\x1a\n" + b"not really a png, but only the Content-Type is checked"
PATH = "/x.png"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    localhost_cert: Path
    localhost_key: Path
    other_cert: Path
    other_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and two leaves it signs, each for a DNS name only (no IP SAN: see above)."""
    directory = tmp_path_factory.mktemp("pki")
    authority = make_ca(directory, "safe_fetch test CA")
    localhost_cert, localhost_key = authority.issue(directory, "localhost", dns_names=["localhost"])
    other_cert, other_key = authority.issue(directory, "other", dns_names=["other.invalid"])
    return Pki(authority.path, localhost_cert, localhost_key, other_cert, other_key)


@dataclass
class TLSServer:
    """An HTTPS server on every address localhost resolves to, all on one port."""

    port: int
    servers: list[ThreadingHTTPServer]
    threads: list[threading.Thread]
    # Every handshake's SNI, None when the client sent none, in arrival order.
    sni: list[str | None] = field(default_factory=list)
    # (Host header, path) of every request that got past the handshake.
    requests: list[tuple[str, str]] = field(default_factory=list)

    def url(self, path: str = PATH) -> str:
        return f"https://localhost:{self.port}{path}"


class _Server4(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server4):
    address_family = socket.AF_INET6


def _localhost_addresses() -> list[str]:
    # Every address, not just the first: safe_fetch connects to the first one its own lookup
    # returns, and a machine may list ::1 before 127.0.0.1 (or only one of them).
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _handler(record: list[tuple[str, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            record.append((self.headers.get("Host", ""), self.path))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")  # the only type fetch() accepts
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    return Handler


def _bind_all(addresses: list[str], handler: type[BaseHTTPRequestHandler]) -> list[_Server4]:
    """One server per address on one shared port. The first gets an ephemeral port; if that
    port is taken on another address, start over rather than fail on a rare collision."""
    for _attempt in range(5):
        servers: list[_Server4] = []
        try:
            for address in addresses:
                cls = _Server6 if ":" in address else _Server4
                port = servers[0].server_address[1] if servers else 0
                servers.append(cls((address, port), handler))
        except OSError:
            for server in servers:
                server.server_close()
            continue
        return servers
    raise RuntimeError(f"no port free on all of {addresses}")


@contextmanager
def serving_tls(cert: Path, key: Path) -> Iterator[TLSServer]:
    """A real HTTPS server presenting `cert`, recording the SNI of every handshake."""
    sni: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def record_sni(_sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: Any) -> None:
        sni.append(name)  # returning None lets the handshake go on with this certificate

    context.sni_callback = record_sni
    requests: list[tuple[str, str]] = []
    servers = _bind_all(_localhost_addresses(), _handler(requests))
    for server in servers:
        # The handshake runs in accept(); a client that rejects the certificate makes it raise
        # SSLError (an OSError), which socketserver drops quietly, as a refused client should be.
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    tls = TLSServer(servers[0].server_address[1], list(servers), threads, sni, requests)
    try:
        yield tls
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


@pytest.fixture(scope="module")
def localhost_server(pki: Pki) -> Iterator[TLSServer]:
    with serving_tls(pki.localhost_cert, pki.localhost_key) as server:
        yield server


@pytest.fixture(scope="module")
def wrong_name_server(pki: Pki) -> Iterator[TLSServer]:
    """Served at localhost, but with a (validly signed) certificate for other.invalid."""
    with serving_tls(pki.other_cert, pki.other_key) as server:
        yield server


def trusting_only(ca: Path) -> ssl.SSLContext:
    # cafile given, so create_default_context loads only it: the system store cannot make a
    # certificate pass. Hostname checks and CERT_REQUIRED are its defaults.
    context = ssl.create_default_context(cafile=str(ca))
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    return context


async def fetch(client: httpx.AsyncClient, url: str) -> bytes:
    return await safe_fetch(
        client,
        url,
        max_bytes=64 * 1024,
        time_limit=5.0,
        allowed_content_types={"image/png"},
        allowed_networks=ALLOW_LOOPBACK,
    )


def verification_error(failure: FetchFailed) -> str:
    """The TLS error under FetchFailed, so a test fails for the reason it claims (a refused
    connection or a timeout would also be FetchFailed)."""
    cause = failure.__cause__
    assert isinstance(cause, httpx.ConnectError), repr(cause)
    assert "CERTIFICATE_VERIFY_FAILED" in str(cause), str(cause)
    return str(cause)


async def test_the_pinned_connection_sends_the_hostname_as_sni_and_verifies_it(
    pki: Pki, localhost_server: TLSServer
) -> None:
    handshakes = len(localhost_server.sni)
    async with httpx.AsyncClient(verify=trusting_only(pki.ca_cert)) as client:
        body = await fetch(client, localhost_server.url())
    assert body == BODY
    # Without the extension the TLS layer would see only the IP: no SNI at all (None), and a
    # hostname check against 127.0.0.1 that this certificate (no IP SAN) cannot pass.
    assert localhost_server.sni[handshakes:] == ["localhost"]
    assert localhost_server.requests[-1] == (f"localhost:{localhost_server.port}", PATH)


async def test_a_certificate_for_another_name_is_rejected_after_pinning(
    pki: Pki, wrong_name_server: TLSServer
) -> None:
    handshakes = len(wrong_name_server.sni)
    async with httpx.AsyncClient(verify=trusting_only(pki.ca_cert)) as client:
        with pytest.raises(FetchFailed, match="could not be reached") as failed:
            await fetch(client, wrong_name_server.url())
    # Trusted CA, wrong name: only the hostname check can refuse it, and it checked "localhost"
    # (not the pinned IP), so the name reached the verifier as well as the SNI.
    assert "Hostname mismatch" in verification_error(failed.value)
    assert "'localhost'" in verification_error(failed.value)
    assert wrong_name_server.sni[handshakes:] == ["localhost"]  # it got as far as the server
    assert wrong_name_server.requests == []  # and no request was sent, so no body either


async def test_a_certificate_from_an_untrusted_ca_is_rejected(
    localhost_server: TLSServer,
) -> None:
    handshakes = len(localhost_server.sni)
    served = len(localhost_server.requests)
    # The default trust store (certifi) has never heard of the throwaway CA.
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchFailed, match="could not be reached") as failed:
            await fetch(client, localhost_server.url())
    assert "Hostname mismatch" not in verification_error(failed.value)  # the chain, not the name
    assert localhost_server.sni[handshakes:] == ["localhost"]
    assert len(localhost_server.requests) == served
