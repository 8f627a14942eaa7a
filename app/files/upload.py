"""Reads one file out of a multipart body as it arrives, into a temp file, hashing on the way.

Not FastAPI's `UploadFile`: Starlette would read the whole body before the handler runs. Here
the size cap stops the read the moment the file passes it, and memory holds one buffer.
"""

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.files.errors import BadUpload, FileTooLarge, NotMultipart
from app.files.safety import SNIFF_BYTES

FILE_FIELD = b"file"
FLUSH_BYTES = 1024 * 1024  # fewer thread hops than one per network chunk


@dataclass
class ReceivedFile:
    path: Path
    raw_filename: str
    size: int
    sha256: str
    head: bytes


@dataclass
class _PartState:
    """What the parser's (synchronous) callbacks collect between two network chunks; its
    `on_*` methods are those callbacks."""

    max_bytes: int
    hasher: "hashlib._Hash"
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    in_file: bool = False
    file_done: bool = False
    filename: str | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    size: int = 0
    head: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> dict[str, object]:
        return {
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    # The parser itself caps each part's headers (count and line length): they stay small.
    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition = self.headers.get(b"content-disposition", b"").decode("latin-1")
        _, options = parse_options_header(disposition)
        if options.get(b"name") == FILE_FIELD and not self.file_done and b"filename" in options:
            self.in_file = True
            # Browsers send UTF-8 names as raw bytes; the parser handed them over as latin-1.
            raw = options[b"filename"]
            try:
                self.filename = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.filename = raw.decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            return  # other fields are ignored; the body cap bounds them
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise FileTooLarge(self.max_bytes)
        self.hasher.update(chunk)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.file_done = True
        self.headers = {}


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise NotMultipart()
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise BadUpload("The multipart body has no valid boundary")
    return boundary


async def _flush(handle: IO[bytes], state: _PartState) -> None:
    if state.pending:
        data = b"".join(state.pending)
        state.pending.clear()
        state.pending_bytes = 0
        await anyio.to_thread.run_sync(handle.write, data)


async def receive_file(
    body: AsyncIterator[bytes], *, content_type: str | None, max_bytes: int, target: Path
) -> ReceivedFile:
    """Spool the `file` field of a multipart body to `target`; the caller removes `target`."""
    boundary = _boundary(content_type)
    hasher = hashlib.sha256()
    state = _PartState(max_bytes, hasher)
    parser = MultipartParser(boundary, state.callbacks())  # type: ignore[arg-type]
    handle = await anyio.to_thread.run_sync(target.open, "wb")
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadUpload(f"The multipart body is malformed: {exc}") from exc
            if state.pending_bytes >= FLUSH_BYTES:
                await _flush(handle, state)
            if state.file_done:
                break  # anything after the file is not ours to read
        await _flush(handle, state)
    finally:
        await anyio.to_thread.run_sync(handle.close)
    if not state.file_done or state.filename is None:
        raise BadUpload("Send the file as a multipart field named `file` with a filename")
    return ReceivedFile(target, state.filename, state.size, hasher.hexdigest(), bytes(state.head))
