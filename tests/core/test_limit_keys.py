"""Rate-limit identities: every spelling of one mailbox, every address of one IPv6 network,
is one key; different identities stay apart."""

import pytest

from app.core.limit_keys import address_key, client_key

MAILBOX = "alice@example.com"


@pytest.mark.parametrize(
    "spelling",
    [
        "alice@example.com",
        "Alice@EXAMPLE.com",  # case
        "ＡＬＩＣＥ＠ｅｘａｍｐｌｅ．ｃｏｍ",  # noqa: RUF001  (full-width forms, as an IME types)
        "alice+newsletter@example.com",  # +tag
        "alice+a+b@example.com",
        "alice@example.com.",  # trailing dot of a fully qualified name
        "alice@example。com",  # ideographic full stop
        "  alice@example.com ",
    ],
)
def test_spellings_of_one_mailbox_are_one_key(spelling: str) -> None:
    assert address_key(spelling) == MAILBOX


@pytest.mark.parametrize(
    ("unicode_form", "ascii_form"),
    [
        ("bob@bücher.example", "bob@xn--bcher-kva.example"),
        ("bob@BÜCHER.example.", "BOB@XN--BCHER-KVA.EXAMPLE"),
        ("bob@faß.de", "bob@xn--fa-hia.de"),  # IDNA 2008 keeps ß; 2003 maps it to ss
        ("bob@例え.テスト", "bob@xn--r8jz45g.xn--zckzah"),
    ],
)
def test_an_idn_domain_in_unicode_and_punycode_is_one_key(
    unicode_form: str, ascii_form: str
) -> None:
    assert address_key(unicode_form) == address_key(ascii_form)
    assert address_key(unicode_form).isascii()


@pytest.mark.parametrize(
    "other", ["alicia@example.com", "alice@example.org", "alice.x@example.com", "bob@example.com"]
)
def test_different_mailboxes_stay_apart(other: str) -> None:
    assert address_key(other) != MAILBOX


@pytest.mark.parametrize("text", ["", "not an address", "a@", "@", "a@x..y", "a@xn--!!.com"])
def test_text_that_is_no_address_still_has_a_stable_key(text: str) -> None:
    assert address_key(text) == address_key(text.upper())


def test_a_huge_text_costs_a_bounded_key() -> None:
    assert len(address_key("a" * 100_000 + "@example.com")) <= 320


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack socket's view of an IPv4 client
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:0:0:0:9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_client_key(ip: str, key: str) -> None:
    assert client_key(ip) == key


def test_the_ipv6_prefix_is_configurable() -> None:
    assert client_key("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"
    assert client_key("2001:db8:1:2::1", ipv6_prefix=128) == "2001:db8:1:2::1/128"
    assert client_key("2001:db8:1:2::1", ipv6_prefix=56) != client_key(
        "2001:db8:1:300::1", ipv6_prefix=56
    )
