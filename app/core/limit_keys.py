"""What a rate limit counts against: an identity, never a spelling of one.

A limit keyed on the text a client sends is bypassed by sending another text that means the
same thing: another address of the same IPv6 network, another spelling of the same mailbox.
Every per-client limit goes through `client_key`, every per-address limit through
`address_key`. Both may merge more than the mail system or the network would (two people who
share a /64, two mailboxes a provider keeps apart): merging only tightens a limit, while a key
that splits one identity in two multiplies the budget.
"""

import contextlib
import functools
import ipaddress
import re
import unicodedata

# Longer than any valid address (RFC 5321: 254), so every valid one is keyed whole; a longer
# text is refused by validation anyway and must not cost a long key or a long normalisation.
_MAX_ADDRESS_CHARS = 320
# The label separators IDNA accepts: ASCII and ideographic full stops (NFKC has already made
# the full-width and half-width forms one of these).
_DOTS = re.compile("[.\u3002]")


# Every limited request asks, and the same few clients ask again and again: parsing the address
# was ~3% of a cached read's CPU. Bounded, so a flood of new addresses only churns it.
@functools.lru_cache(maxsize=4096)
def client_key(ip: str, *, ipv6_prefix: int = 64) -> str:
    """The rate-limit identity of a client address.

    IPv4 as is. IPv6 masked to its network (`2001:db8:1:2::/64`): a host is handed a whole
    /64 (SLAAC, privacy addresses), so a key per address gives it 2^64 budgets. An IPv4-mapped
    IPv6 address (`::ffff:192.0.2.1`, a dual-stack socket) is the IPv4 client it maps. A zone
    index (`fe80::1%eth0`) names our interface, not the client, and is dropped. Anything that
    is not an address (`unknown`, a Unix socket) is keyed on its text.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


def address_key(email: str) -> str:
    """The rate-limit identity of a mail address; the address stored and mailed is unchanged.

    - NFKC: compatibility forms (full-width letters, `@` and `.` as a Japanese IME types them,
      ligatures) are the characters they stand for; a keyboard may type either.
    - casefold (stronger than lower: `ß` is `ss`): domains are case-insensitive by definition,
      and every large provider treats local parts the same way.
    - the `+tag` of the local part dropped: Gmail, Outlook, Fastmail, iCloud and Proton deliver
      `name+anything@` to `name@`, so tags are unlimited aliases of one inbox.
    - the domain IDNA-encoded, so `bücher.example` and `xn--bcher-kva.example` are one
      domain: punycode labels are decoded first, and the whole folded like the rest, then
      encoded again. Python's codec is IDNA 2003, which differs from IDNA 2008 for a few
      characters (`ß`, final sigma, joiners); decoding and case folding before encoding makes
      both spellings of those one key too.
    - no trailing dot: `example.com.` is the same (fully qualified) name as `example.com`.

    Text that is not an address still gets a stable key (its normalised form): it is refused
    by validation, but counted all the same.
    """
    text = _fold(email.strip()[:_MAX_ADDRESS_CHARS])
    local, at, domain = text.rpartition("@")  # the last @: a quoted local part may hold one
    if not at:
        return text
    local = local.split("+", 1)[0]
    labels = [_decode_label(label) for label in _DOTS.split(domain)]
    while labels and not labels[-1]:
        labels.pop()
    domain = _fold(".".join(labels))
    # Not a valid domain: the request is refused, and keyed on the text as it is.
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _decode_label(label: str) -> str:
    if not label.startswith("xn--"):
        return label
    try:
        return label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return label
