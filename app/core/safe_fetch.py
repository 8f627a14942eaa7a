"""Fetching a URL a user gave us without letting them reach inside our network (SSRF).

The rules: http and https only, no credentials in the URL; every address the host resolves to
must be public (any non-public one refuses the whole host, so a name can't mix a public and an
internal address and hope we pick the second); the connection goes to the address we vetted,
not to a second lookup that DNS rebinding could answer differently; redirects are followed by
hand and each hop is vetted again; the body is capped in bytes and the whole fetch in time.

The pinned connection keeps the hostname where it matters: the Host header for the server and
SNI plus certificate verification for TLS (httpcore's `sni_hostname` extension). Each fetch
asks for `Connection: close`, so a pooled TLS connection verified for one hostname is never
reused for another hostname on the same address.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Cloud instance metadata and host agents: refused even inside SSRF_ALLOWED_NETWORKS, because
# they hand out credentials. 168.63.129.16 (Azure's host agent) is a public address.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.169.253",  # AWS DNS
        "168.63.129.16",  # Azure wireserver
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS IPv6 DNS
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


class FetchRefused(Exception):
    """The URL or one of its hops is not allowed; the message is safe to show the requester."""


class FetchFailed(Exception):
    """The fetch was allowed but did not succeed (timeout, size, status); safe to show."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64): it is where packets go."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_class(ip: IPAddress) -> str | None:
    """Why an address is not a public destination ("loopback", "private", ...), or None."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_class(embedded)
            if reason is not None or ip.sixtofour is None:
                # Mapped and NAT64 addresses are exactly their IPv4 address (ipaddress calls
                # the NAT64 prefix reserved, but DNS64 networks reach every IPv4 site by it).
                return reason
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (carrier-grade NAT)"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-public"),
    )
    return next((name for refused, name in checks if refused), None)


def refusal(ip: IPAddress, allowed: Collection[IPNetwork] = ()) -> str | None:
    """Why we won't connect to `ip`, or None. `allowed` opens internal ranges (not metadata)."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    target = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if any(target.version == net.version and target in net for net in allowed):
        return None
    return address_class(ip)


@dataclass(frozen=True, slots=True)
class Target:
    url: httpx.URL  # as given: the hostname, for Host, SNI and resolving redirects
    ip: IPAddress  # where we connect


def check_url(url: str | httpx.URL) -> httpx.URL:
    """The URL's shape alone: scheme, credentials, host. No DNS; literal IPs are vetted later."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchRefused("The URL is not valid.") from exc
    if len(str(parsed)) > MAX_URL_LENGTH:
        raise FetchRefused("The URL is too long.")
    if parsed.scheme not in DEFAULT_PORTS:
        raise FetchRefused("Only http and https URLs can be fetched.")
    if parsed.userinfo:
        raise FetchRefused("URLs with credentials are not fetched.")
    if not parsed.host:
        raise FetchRefused("The URL has no host.")
    return parsed


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(url: httpx.URL, allowed: Collection[IPNetwork]) -> Target:
    """Resolve off the event loop and vet every address; connect to the first."""
    port = url.port or DEFAULT_PORTS[url.scheme]
    ip = literal_ip(url.host)
    if ip is not None:
        addresses = [ip]
    else:
        # The IDNA form; the resolver also reads forms like 2130706433 or 127.1, which is why
        # what it returns is vetted, not the text of the URL.
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchFailed("The host name could not be resolved.") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise FetchFailed("The host name could not be resolved.")
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            raise FetchRefused(f"The URL points to a {reason} address, which is not allowed.")
    return Target(url, addresses[0])


def pinned_request(target: Target, timeout: httpx.Timeout | None = None) -> httpx.Request:
    """A GET to the vetted address that still speaks to the named host (Host, SNI, TLS)."""
    url = target.url
    headers = {
        "Host": url.netloc.decode("ascii"),
        "Connection": "close",
        # Raw bytes only: a decompressed body could be far larger than the bytes we counted.
        "Accept-Encoding": "identity",
    }
    extensions: dict[str, object] = (
        {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    )
    if timeout is not None:
        # A request built by hand carries no timeout (the client's default is applied only by
        # build_request): without this, a silent upstream is bounded by time_limit alone.
        extensions["timeout"] = timeout.as_dict()
    return httpx.Request(
        "GET", url.copy_with(host=str(target.ip)), headers=headers, extensions=extensions
    )


async def safe_fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    time_limit: float,
    allowed_content_types: Collection[str] | None = None,
    allowed_networks: Collection[IPNetwork] = (),
    step_timeout: httpx.Timeout | None = None,
) -> bytes:
    """The body of `url`, or FetchRefused / FetchFailed with a message safe to show.
    `time_limit` bounds the whole fetch; `step_timeout` (connect, read, ...) each step of it."""
    try:
        async with asyncio.timeout(time_limit):
            return await _fetch(
                client, url, max_bytes, allowed_content_types, allowed_networks, step_timeout
            )
    except TimeoutError as exc:
        raise FetchFailed(f"The URL did not answer within {time_limit:g} seconds.") from exc


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    max_bytes: int,
    allowed_content_types: Collection[str] | None,
    allowed_networks: Collection[IPNetwork],
    step_timeout: httpx.Timeout | None,
) -> bytes:
    current = check_url(url)
    for _hop in range(MAX_REDIRECTS + 1):
        target = await resolve(current, allowed_networks)
        try:
            response = await client.send(
                pinned_request(target, step_timeout), stream=True, follow_redirects=False
            )
        except httpx.TimeoutException as exc:
            raise FetchFailed("The URL did not answer in time.") from exc
        except httpx.TransportError as exc:
            raise FetchFailed("The URL could not be reached.") from exc
        try:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed("The URL redirected without a location.")
                try:
                    current = check_url(current.join(location))
                except httpx.InvalidURL as exc:
                    raise FetchRefused("The URL redirected to an invalid URL.") from exc
                continue
            if response.status_code != 200:
                raise FetchFailed(f"The URL answered with status {response.status_code}.")
            _check_content_type(response, allowed_content_types)
            return await _read_capped(response, max_bytes)
        finally:
            await response.aclose()
    raise FetchFailed(f"The URL redirected more than {MAX_REDIRECTS} times.")


def _check_content_type(response: httpx.Response, allowed: Collection[str] | None) -> None:
    if allowed is None:
        return
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in allowed:
        shown = media_type[:100] or "none"
        raise FetchFailed(f"The URL's content type ({shown}) is not accepted.")


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    too_large = FetchFailed(f"The URL's content is larger than {max_bytes} bytes.")
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise FetchFailed("The URL's content is compressed, which is not accepted.")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:  # a lying or absent Content-Length
                raise too_large
    except httpx.TimeoutException as exc:
        raise FetchFailed("The URL stopped sending its content.") from exc
    except httpx.TransportError as exc:
        raise FetchFailed("The URL's content could not be read.") from exc
    return bytes(body)
