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
    """What the parser's (synchronous) callbacks collect between two network chunks."""

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


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise NotMultipart()
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise BadUpload("The multipart body has no valid boundary")
    return boundary


def _callbacks(state: _PartState, max_bytes: int, hasher: "hashlib._Hash") -> dict[str, object]:
    # The parser itself caps each part's headers (count and line length): they stay small.
    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        disposition = state.headers.get(b"content-disposition", b"").decode("latin-1")
        _, options = parse_options_header(disposition)
        if options.get(b"name") == FILE_FIELD and not state.file_done and b"filename" in options:
            state.in_file = True
            # Browsers send UTF-8 names as raw bytes; the parser handed them over as latin-1.
            raw = options[b"filename"]
            try:
                state.filename = raw.decode("utf-8")
            except UnicodeDecodeError:
                state.filename = raw.decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not state.in_file:
            return  # other fields are ignored; the body cap bounds them
        chunk = data[start:end]
        state.size += len(chunk)
        if state.size > max_bytes:
            raise FileTooLarge(max_bytes)
        hasher.update(chunk)
        if len(state.head) < SNIFF_BYTES:
            state.head += chunk[: SNIFF_BYTES - len(state.head)]
        state.pending.append(chunk)
        state.pending_bytes += len(chunk)

    def on_part_end() -> None:
        if state.in_file:
            state.in_file = False
            state.file_done = True
        state.headers = {}

    return {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }


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
    state = _PartState()
    hasher = hashlib.sha256()
    parser = MultipartParser(boundary, _callbacks(state, max_bytes, hasher))  # type: ignore[arg-type]
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
