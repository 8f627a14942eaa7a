import logging
import re
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta

import anyio
import anyio.to_thread
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.principal import Principal
from app.core.config import Settings
from app.core.db import utcnow
from app.core.storage import Storage, StorageUnavailable, new_key, storage_error_for
from app.files import quota as quota_of
from app.files.errors import (
    FileNotFound,
    FileTooLarge,
    QuotaExceeded,
    RangeNotSatisfiable,
    UnsupportedFileType,
)
from app.files.models import StoredFile
from app.files.quota import Quota
from app.files.safety import (
    ALLOWED_EXTENSIONS,
    content_type_for,
    extension_of,
    sanitize_filename,
)
from app.files.schemas import FileRead, VariantRead
from app.files.upload import receive_file

logger = logging.getLogger("app.files")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


async def upload(
    *,
    session: AsyncSession,
    storage: Storage,
    body: AsyncIterator[bytes],
    content_type: str | None,
    max_bytes: int,
    owner_id: int,
    quota: Quota,
    item_id: int | None = None,
    allowed: Collection[str] = ALLOWED_EXTENSIONS,
) -> StoredFile:
    """Spool, check, store the object, then write the row under the owner's quota lock; on any
    failure undo what was done."""
    # A first look without the lock: a user at the quota is refused before sending a byte, and
    # the read stops as soon as the file passes what is left. The locked check comes last.
    used = await quota_of.usage(session=session, owner_id=owner_id)
    room = quota_of.room(quota=quota, used=used)
    temp = storage.temp_path()
    key = new_key()
    stored = False
    try:
        try:
            received = await receive_file(
                body, content_type=content_type, max_bytes=min(max_bytes, room), target=temp
            )
        except FileTooLarge as exc:
            if room < max_bytes:
                raise QuotaExceeded.bytes(quota.max_bytes, used.bytes, room + 1, cut=True) from exc
            raise
        except OSError as exc:
            raise storage_error_for(exc) from exc
        filename, stored_type = _accepted(received.raw_filename, received.head, allowed)
        await storage.put(key, temp, content_type=stored_type)
        stored = True
        await quota_of.reserve(session=session, owner_id=owner_id, size=received.size, quota=quota)
        row = StoredFile(
            key=key, filename=filename, content_type=stored_type, size=received.size,
            sha256=received.sha256, owner_id=owner_id, item_id=item_id,
        )  # fmt: skip
        session.add(row)
        await session.commit()
    except BaseException:
        if stored:  # the row never made it: don't leave its object behind
            with anyio.CancelScope(shield=True):
                await _delete_quietly(storage, key)
        raise
    else:
        return row
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: temp.unlink(missing_ok=True))


def _accepted(raw_filename: str, head: bytes, allowed: Collection[str]) -> tuple[str, str]:
    """The safe display name and the content type, if the extension is allowed and the magic
    bytes agree with it (the client's Content-Type is never believed)."""
    filename = sanitize_filename(raw_filename)
    extension = extension_of(filename)
    if extension not in allowed:
        accepted = ", ".join(sorted(allowed))
        raise UnsupportedFileType(f"Files of type .{extension} are not accepted ({accepted})")
    stored_type = content_type_for(extension, head)
    if stored_type is None:
        raise UnsupportedFileType(f"The content is not a .{extension} file")
    return filename, stored_type


async def _delete_quietly(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except Exception:
        logger.warning("object %s left behind; purge_orphans will remove it", key, exc_info=True)


async def get_readable(*, session: AsyncSession, file_id: int, viewer: Principal) -> StoredFile:
    """The file, if the viewer owns it or is an admin; 404 otherwise (its existence is private)."""
    row = await session.get(StoredFile, file_id)
    if row is None or row.deleted_at is not None:
        raise FileNotFound(file_id)
    if row.owner_id != viewer.id and not viewer.is_admin:
        raise FileNotFound(file_id)
    return row


async def list_for_item(*, session: AsyncSession, item_id: int) -> Sequence[StoredFile]:
    """The item's uploaded images; their variants (same item) are listed under each."""
    statement = (
        select(StoredFile)
        .where(
            StoredFile.item_id == item_id,
            StoredFile.source_file_id.is_(None),
            StoredFile.deleted_at.is_(None),
        )
        .order_by(StoredFile.id)
    )
    return (await session.execute(statement)).scalars().all()


def download_url(file_id: int, *, settings: Settings) -> str:
    """A stored file's content route, under API_V1_PREFIX (the API's and the worker's)."""
    return settings.api_path(f"/files/{file_id}/content")


async def variants_of(
    *, session: AsyncSession, file_ids: Collection[int]
) -> dict[int, list[StoredFile]]:
    """The images made from each of `file_ids` (JOBS-4), oldest first."""
    found: dict[int, list[StoredFile]] = {file_id: [] for file_id in file_ids}
    if not found:
        return found
    rows = await session.execute(
        select(StoredFile)
        .where(StoredFile.source_file_id.in_(found), StoredFile.deleted_at.is_(None))
        .order_by(StoredFile.id)
    )
    for row in rows.scalars():
        found[row.source_file_id or 0].append(row)
    return found


def file_read(
    row: StoredFile, *, settings: Settings, variants: Sequence[StoredFile] = ()
) -> FileRead:
    read = FileRead.model_validate(row)
    read.variants = [
        VariantRead(
            file_id=v.id,
            variant=v.variant or "",
            width=v.width,
            height=v.height,
            content_type=v.content_type,
            size=v.size,
            download_url=download_url(v.id, settings=settings),
        )
        for v in variants
    ]
    return read


async def delete_file(*, session: AsyncSession, storage: Storage, row: StoredFile) -> None:
    """The row goes first: a row must never point at a missing object, an object without a
    row is only an orphan for the purge."""
    keys = [row.key] + [
        v.key for v in (await variants_of(session=session, file_ids=[row.id]))[row.id]
    ]
    # Derived images go with their source (the foreign key cascades).
    await session.execute(delete(StoredFile).where(StoredFile.id == row.id))
    await session.commit()
    for key in keys:
        await _delete_quietly(storage, key)


async def unlink_item_files(*, session: AsyncSession, item_id: int) -> None:
    """Mark an item's images as gone (the caller commits); the purge removes them later."""
    await session.execute(
        update(StoredFile)
        .where(StoredFile.item_id == item_id, StoredFile.deleted_at.is_(None))
        .values(deleted_at=utcnow())
    )


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive
    partial: bool


def parse_range(*, header: str | None, size: int) -> ByteRange:
    """One `bytes=` range; several ranges are answered whole (allowed by RFC 9110)."""
    whole = ByteRange(0, size - 1, partial=False)
    if header is None:
        return whole
    header = header.strip()
    if "," in header and header.startswith("bytes="):
        return whole
    match = _RANGE.match(header)
    if match is None or match.groups() == ("", ""):
        raise RangeNotSatisfiable(size)
    first, last = match.groups()
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - length), size - 1, partial=True)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(size)
    return ByteRange(start, end, partial=True)


def etag_of(row: StoredFile) -> str:
    return f'"{row.sha256}"'


def etag_matches(*, if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


async def open_content(
    *, storage: Storage, row: StoredFile, byte_range: ByteRange
) -> AsyncIterator[bytes]:
    """The object's bytes, with the first chunk already read: a storage failure becomes an
    error answer here, before any header is sent, not a cut-off body."""
    if row.size == 0:
        return _chunks(b"", None)
    chunks = storage.stream(row.key, byte_range.start, byte_range.end)
    try:
        first = await anext(chunks)
    except (FileNotFoundError, StopAsyncIteration) as exc:
        logger.exception("object %s of file %s is missing", row.key, row.id)
        raise StorageUnavailable() from exc
    return _chunks(first, chunks)


async def _chunks(first: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    try:
        yield first
        if rest is not None:
            async for chunk in rest:
                yield chunk
    finally:
        # Closing this generator (a download cut off) must close the storage's too, at once,
        # not when the garbage collector finds it: it holds an open file or S3 response.
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True, slots=True)
class PurgeReport:
    unlinked_rows: int
    orphan_objects: int
    temp_files: int


async def purge_orphans(
    *, session: AsyncSession, storage: Storage, older_than: timedelta
) -> PurgeReport:
    """Remove files unlinked before the cutoff (row, then object), objects that have no row
    and are older than the cutoff (an upload that died between object and row, or rows gone
    with a hard-deleted item or user), and stale temp files. The cutoff keeps an upload in
    flight, whose row is not committed yet, out of reach."""
    cutoff = utcnow() - older_than
    unlinked = 0
    while True:
        batch = (
            await session.execute(
                select(StoredFile.id, StoredFile.key)
                .where(StoredFile.deleted_at < cutoff)
                .order_by(StoredFile.id)
                .limit(500)
            )
        ).all()
        if not batch:
            break
        await session.execute(delete(StoredFile).where(StoredFile.id.in_([r.id for r in batch])))
        await session.commit()
        for row in batch:
            await _delete_quietly(storage, row.key)
        unlinked += len(batch)

    orphans = 0
    candidates: list[str] = []
    async for stored in storage.list_keys():
        if stored.modified_at < cutoff:
            candidates.append(stored.key)
        if len(candidates) >= 500:
            orphans += await _delete_rowless(session, storage, candidates)
            candidates = []
    orphans += await _delete_rowless(session, storage, candidates)
    temp_files = await storage.remove_stale_temp_files(cutoff)
    return PurgeReport(unlinked_rows=unlinked, orphan_objects=orphans, temp_files=temp_files)


async def _delete_rowless(session: AsyncSession, storage: Storage, keys: list[str]) -> int:
    if not keys:
        return 0
    known = set(
        (await session.execute(select(StoredFile.key).where(StoredFile.key.in_(keys))))
        .scalars()
        .all()
    )
    missing = [key for key in keys if key not in known]
    for key in missing:
        await _delete_quietly(storage, key)
    return len(missing)
