"""Forwarded headers, believed only from a proxy we trust (TRUSTED_PROXIES); anyone else could
write anything into them.

uvicorn's ProxyHeadersMiddleware sets `scope["client"]` from X-Forwarded-For and
`scope["scheme"]` from X-Forwarded-Proto; this subclass adds the Host (with its port) from
X-Forwarded-Host, so redirects and absolute URLs keep the name, scheme and port the client used.
Mounted in the app rather than left to the server, so it holds under any ASGI server.

Semantics pinned by tests/core/test_proxy_headers.py (uvicorn 0.54):
- X-Forwarded-For: walking from the nearest hop outwards, the first address not trusted is the
  client; when every hop is trusted, the leftmost one. `[2001:db8::1]:443` gives the address and
  port. Several header lines are joined.
- X-Forwarded-Proto: the last line, and only one of http/https/ws/wss (a list like
  `https, http` is ignored); a WebSocket gets ws/wss.
- X-Forwarded-Host: the last line's rightmost entry (the one our peer vouches for: entries to
  its left may have come from the client), and only a well-formed `host[:port]`.
"""

import ipaddress
import re
from collections.abc import Sequence
from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

# Starlette's own Host grammar (starlette._utils): characters that can't change a URL's path
# or authority, or a bracketed IPv6 (or IPvFuture) literal, and an optional port.
_HOST_RE = re.compile(
    r"^(?P<host>[a-z0-9._~%!$&'()*+,;=-]+|\[(?:(?P<ipv6>[a-f0-9]*:[a-f0-9.:]+)|"
    r"(?-i:v)[a-f0-9]+\.[a-z0-9._~!$&'()*+,;=:-]+)\])(?::(?P<port>[0-9]+))?$",
    re.IGNORECASE,
)


class ParsedHost(NamedTuple):
    host: str  # lower case; an IPv6 literal without its brackets
    port: str | None


def parse_host(value: str) -> ParsedHost | None:
    """A Host header value as Starlette reads it; None if malformed."""
    match = _HOST_RE.fullmatch(value)
    if match is None:
        return None
    host = match["host"].lower()
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
        host = host[1:-1]
    return ParsedHost(host, match["port"])


def trusted_hosts(entries: Sequence[str]) -> list[str]:
    """TRUSTED_PROXIES in the form uvicorn matches: it reads `10.0.0.1/8` (host bits set) as a
    literal string that no address equals, so networks are normalized, and single addresses
    kept as addresses (a set lookup rather than a scan)."""
    normalized = []
    for entry in entries:
        network = ipaddress.ip_network(entry.strip(), strict=False)
        single = network.num_addresses == 1
        normalized.append(str(network.network_address) if single else str(network))
    return normalized


class ForwardedHeadersMiddleware(ProxyHeadersMiddleware):
    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[str]) -> None:
        # uvicorn types its ASGI callables with its own (structurally equal) protocols.
        asgi_app: ASGI3Application = app  # type: ignore[assignment]
        super().__init__(asgi_app, trusted_hosts=trusted_hosts(trusted_proxies))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            # The peer as it connected: the parent replaces scope["client"] below.
            if peer and peer[0] in self.trusted_hosts:
                _forward_host(scope)
        await super().__call__(scope, receive, send)  # type: ignore[arg-type]


def _forward_host(scope: Scope) -> None:
    value: bytes | None = None
    for name, header in scope["headers"]:
        if name == b"x-forwarded-host":
            value = header
    if value is None:
        return
    host = value.decode("latin-1").rsplit(",", 1)[-1].strip()
    if parse_host(host) is None:
        return  # garbage is not a host: keep the one we were given
    headers = [(name, header) for name, header in scope["headers"] if name != b"host"]
    headers.append((b"host", host.encode("latin-1")))
    scope["headers"] = headers
