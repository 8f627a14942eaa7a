"""Names and contents we accept: sanitized display names, and magic bytes that must match the
extension. A small signature table instead of libmagic: eight types, no native dependency."""

import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote

MAX_NAME_BYTES = 200
SNIFF_BYTES = 512

_UNSAFE = re.compile(r"[^\w\s.()\-]", re.UNICODE)
_RUNS = re.compile(r"[\s_]+")


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The sniffed prefix may cut a multi-byte character in two; that is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _zip(head: bytes) -> bool:
    return head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


_SIGNATURES: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "png": ("image/png", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    "jpg": ("image/jpeg", lambda h: h.startswith(b"\xff\xd8\xff")),
    "jpeg": ("image/jpeg", lambda h: h.startswith(b"\xff\xd8\xff")),
    "gif": ("image/gif", lambda h: h.startswith((b"GIF87a", b"GIF89a"))),
    "webp": ("image/webp", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"),
    "pdf": ("application/pdf", lambda h: h.startswith(b"%PDF-")),
    "zip": ("application/zip", _zip),
    "txt": ("text/plain; charset=utf-8", _is_text),
    "csv": ("text/csv; charset=utf-8", _is_text),
}
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "webp"})
ALLOWED_EXTENSIONS = frozenset(_SIGNATURES)


def sanitize_filename(raw: str) -> str:
    """A display name that can't be a path: last segment only, no control characters, no
    leading dots, a conservative character set, at most MAX_NAME_BYTES of UTF-8."""
    name = unicodedata.normalize("NFC", raw)
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")  # NUL, controls
    name = re.split(r"[/\\]", name)[-1]
    name = _RUNS.sub("_", _UNSAFE.sub("_", name))
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ext = ext.strip("._ ")[:10]
    budget = MAX_NAME_BYTES - len(ext.encode()) - 1
    # No leading dot (hidden files, `..`); cut by bytes, never inside a character.
    stem = stem.strip("._ ").encode()[:budget].decode("utf-8", "ignore").rstrip("._ ")
    if not stem:
        stem = "file"
    return f"{stem}.{ext}" if ext else stem


def extension_of(filename: str) -> str:
    _, dot, ext = filename.rpartition(".")
    return ext.lower() if dot else ""


def content_type_for(extension: str, head: bytes) -> str | None:
    """The content type to store, or None if the bytes don't match the extension."""
    entry = _SIGNATURES.get(extension)
    if entry is None or not entry[1](head):
        return None
    return entry[0]


def content_disposition(filename: str, *, inline: bool = False) -> str:
    """RFC 6266: an ASCII fallback for old clients, and the exact name as UTF-8."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._()\- ]", "_", ascii_name).strip() or "download"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
