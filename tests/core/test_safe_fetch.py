"""The SSRF guard: the address classifier (v4 and v6) and fetches against real local servers."""

import ipaddress
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.core.http import create_http_client
from app.core.safe_fetch import (
    MAX_REDIRECTS,
    FetchFailed,
    FetchRefused,
    Target,
    address_class,
    check_url,
    parse_networks,
    pinned_request,
    refusal,
    safe_fetch,
)
from tests.images.helpers import Upstream, open_image, serving

ALLOW_127_0_0_2 = parse_networks(["127.0.0.2/32"])
IMAGE_TYPES = {"image/png", "image/jpeg"}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),  # Azure's host agent: a public address
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("100.127.255.254", "shared (carrier-grade NAT)"),
        ("240.0.0.1", "private"),  # reserved, listed by ipaddress among the private ranges
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("2001:db8::1", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 around 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 around 169.254.169.254
        ("64:ff9b:1::a00:1", "private"),  # local-use NAT64 around 10.0.0.1
        ("2001::1", "private"),  # Teredo: refused whatever it carries
    ],
)
def test_non_public_addresses_are_classified(address: str, expected: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected
    assert refusal(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::200e",
     "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


def test_allowed_networks_open_a_range_but_never_metadata() -> None:
    assert refusal(ipaddress.ip_address("127.0.0.2"), ALLOW_127_0_0_2) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.2"), ALLOW_127_0_0_2) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), ALLOW_127_0_0_2) == "loopback"
    everything = parse_networks(["0.0.0.0/0", "::/0", "169.254.0.0/16"])
    assert refusal(ipaddress.ip_address("169.254.169.254"), everything) == "cloud metadata"
    assert refusal(ipaddress.ip_address("fd00:ec2::254"), everything) == "cloud metadata"
    assert refusal(ipaddress.ip_address("10.0.0.1"), everything) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "Only http and https"),
        ("ftp://example.com/a.png", "Only http and https"),
        ("gopher://example.com/", "Only http and https"),
        ("javascript:alert(1)", "Only http and https"),
        ("http://user:pass@example.com/a.png", "credentials"),
        ("http:///a.png", "no host"),
        ("http://example.com/" + "a" * 3000, "too long"),
        ("http://[::1/", "not valid"),
    ],
)
def test_urls_of_the_wrong_shape_are_refused(url: str, message: str) -> None:
    with pytest.raises(FetchRefused, match=message):
        check_url(url)


def test_the_request_goes_to_the_vetted_address_and_speaks_to_the_named_host() -> None:
    url = httpx.URL("https://images.example.com:8443/a.png?x=1")
    request = pinned_request(Target(url, ipaddress.ip_address("203.0.113.7")))
    assert str(request.url) == "https://203.0.113.7:8443/a.png?x=1"
    assert request.headers["host"] == "images.example.com:8443"
    assert request.extensions["sni_hostname"] == "images.example.com"  # SNI and certificate
    assert request.headers["connection"] == "close"  # no pooled reuse across hostnames
    idn_url = httpx.URL("https://bücher.example/")
    idn = pinned_request(Target(idn_url, ipaddress.ip_address("203.0.113.8")))
    assert idn.extensions["sni_hostname"] == "xn--bcher-kva.example"
    assert idn.headers["host"] == "xn--bcher-kva.example"
    assert idn.url.host == "203.0.113.8"
    v6 = pinned_request(Target(httpx.URL("http://h.example/"), ipaddress.ip_address("2001:db8::1")))
    assert v6.url.host == "2001:db8::1"
    assert "sni_hostname" not in v6.extensions


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serving("127.0.0.1", "127.0.0.2") as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with create_http_client() as client:
        yield client


async def fetch(http: httpx.AsyncClient, url: str, **options: object) -> bytes:
    values: dict[str, object] = {
        "max_bytes": 1024 * 1024, "time_limit": 5.0, "allowed_content_types": IMAGE_TYPES,
        "allowed_networks": ALLOW_127_0_0_2,
    }  # fmt: skip
    values.update(options)
    return await safe_fetch(http, url, **values)  # type: ignore[arg-type]


async def test_an_allowed_network_serves_an_image(
    http: httpx.AsyncClient, upstream: Upstream
) -> None:
    body = await fetch(http, upstream.url("127.0.0.2", "/image.png"))
    assert open_image(body).size == (80, 60)
    relative = upstream.url("127.0.0.2", "/redirect?to=/image.png")
    assert open_image(await fetch(http, relative)).size == (80, 60)  # redirect, same host


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/image.png", "loopback"),
        ("http://[::1]:{port}/image.png", "loopback"),
        ("http://localhost:{port}/image.png", "loopback"),  # through DNS
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.1/image.png", "private"),
        ("http://[::ffff:127.0.0.1]:{port}/image.png", "loopback"),
        ("http://0.0.0.0:{port}/image.png", "unspecified"),
        ("http://2130706433:{port}/image.png", "loopback"),  # 127.0.0.1 as one number
        ("http://0x7f000001:{port}/image.png", "loopback"),
        ("http://127.1:{port}/image.png", "loopback"),
    ],
)
async def test_internal_addresses_are_refused_before_connecting(
    http: httpx.AsyncClient, upstream: Upstream, url: str, reason: str
) -> None:
    served = len(upstream.requests)
    with pytest.raises(FetchRefused) as refused:
        await fetch(http, url.format(port=upstream.port))
    assert str(refused.value) == f"The URL points to a {reason} address, which is not allowed."
    assert len(upstream.requests) == served  # nothing reached the server


async def test_a_redirect_to_loopback_is_refused(
    http: httpx.AsyncClient, upstream: Upstream
) -> None:
    target = upstream.url("127.0.0.1", "/image.png")
    with pytest.raises(FetchRefused, match="loopback"):
        await fetch(http, upstream.url("127.0.0.2", f"/redirect?to={target}"))
    assert ("127.0.0.1", "/image.png") not in {(h.split(":")[0], p) for h, p in upstream.requests}
    with pytest.raises(FetchRefused, match="Only http and https"):
        await fetch(http, upstream.url("127.0.0.2", "/redirect?to=file:///etc/passwd"))


@pytest.mark.parametrize(
    ("path", "options", "message"),
    [
        ("/loop", {}, f"redirected more than {MAX_REDIRECTS} times"),
        ("/big", {}, "larger than 1048576 bytes"),
        ("/big-undeclared", {"max_bytes": 100_000}, "larger than 100000 bytes"),
        ("/text", {}, r"content type \(text/plain\) is not accepted"),
        ("/gzip", {}, "compressed"),
        ("/missing", {}, "status 404"),
        ("/slow", {"time_limit": 0.5}, "did not answer within 0.5 seconds"),
    ],
)
async def test_caps_and_bad_answers_fail_with_a_safe_message(
    http: httpx.AsyncClient,
    upstream: Upstream,
    path: str,
    options: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(FetchFailed, match=message):
        await fetch(http, upstream.url("127.0.0.2", path), **options)


async def test_an_unresolvable_host_fails_cleanly(http: httpx.AsyncClient) -> None:
    with pytest.raises(FetchFailed, match="could not be resolved"):
        await fetch(http, "http://no-such-host.invalid/a.png")
