"""Per-user storage quota and file count (issue 13 item 7).

Usage is not a counter kept beside the files: it is summed from the user's live rows under a
per-user lock (app.core.user_locks), in the transaction that inserts the new row. So it cannot
drift (a delete, an item's unlink, a cascade or the purge free quota by removing rows), and two
uploads racing past the quota are serialised: the second one counts the first.
"""

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.user_locks import lock_user
from app.files.errors import QuotaExceeded
from app.files.models import StoredFile

LOCK_SCOPE = "storage"


@dataclass(frozen=True, slots=True)
class Quota:
    max_bytes: int
    max_files: int


def quota_for(settings: Settings) -> Quota:
    # The same for admins: a stolen admin token must not fill the disk either.
    return Quota(max_bytes=settings.user_storage_quota_bytes, max_files=settings.user_max_files)


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    files: int


async def usage(*, session: AsyncSession, owner_id: int) -> Usage:
    row = (
        await session.execute(
            select(func.coalesce(func.sum(StoredFile.size), 0), func.count()).where(
                StoredFile.owner_id == owner_id, StoredFile.deleted_at.is_(None)
            )
        )
    ).one()
    return Usage(bytes=int(row[0]), files=int(row[1]))


def check(*, quota: Quota, used: Usage, size: int) -> None:
    """Raise QuotaExceeded if one more file of `size` bytes does not fit."""
    if used.files + 1 > quota.max_files:
        raise QuotaExceeded.files(quota.max_files, used.files)
    if used.bytes + size > quota.max_bytes:
        raise QuotaExceeded.bytes(quota.max_bytes, used.bytes, size)


def room(*, quota: Quota, used: Usage) -> int:
    """Bytes one more file may have; raises when not even an empty one fits."""
    check(quota=quota, used=used, size=0)
    return quota.max_bytes - used.bytes


async def reserve(*, session: AsyncSession, owner_id: int, size: int, quota: Quota) -> None:
    """Lock the owner's quota and check that one more file of `size` fits. The caller adds its
    row and commits (which releases the lock); on refusal the transaction is rolled back."""
    await lock_user(session=session, user_id=owner_id, scope=LOCK_SCOPE)
    try:
        check(quota=quota, used=await usage(session=session, owner_id=owner_id), size=size)
    except QuotaExceeded:
        await session.rollback()
        raise
