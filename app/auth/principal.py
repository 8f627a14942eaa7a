"""Who a live access token speaks for, checked against revocation in one cache round trip.

The database is the source of truth: sessions are revoked there, durably. The cache holds a
short-lived snapshot per session so that an authenticated request costs one cache lookup
(process memory, or one Redis GET shared by every API process) instead of a database query.

Revocation overwrites the snapshot with a tombstone, and readers only ever *add* snapshots
(`only_if_new`), so a reader that loaded a session just before it was revoked can't put the
live snapshot back over the tombstone. If the cache is lost (Redis restarted, or down), every
lookup falls back to the database, which still says revoked: nothing comes back to life.

A request's check may reuse a snapshot this process read from Redis less than
AUTH_SNAPSHOT_LOCAL_SECONDS (<= 1 s) ago (the cache's near copies): no round trip at all.
Revocation here drops the copy with the tombstone write; revocation in another process drops
it when the sessions-ended event arrives (`forget_near`, called by app/realtime/revocation.py),
and if the event is lost the copy expires within that bound. Only copies of what Redis
returned are kept, never of a database load (which may have raced a revocation).

The snapshot also carries the user's permission grants, so a permission check costs nothing
more. A grant change drops the user's snapshots (`forget_user`) and drops them once more
`REFORGET_SECONDS` later: a reader that loaded the old grants just before the commit and stored
them just after the first drop loses its stale snapshot to the second, so every API process
sees the change within about that delay.
"""

import asyncio
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import AuthSession, Role, User, UserPermission
from app.auth.permissions import effective_permissions
from app.core.cache import Cache
from app.core.db import utcnow
from app.core.errors import Unauthorized
from app.core.security import AccessClaims

logger = logging.getLogger("app.auth")
SNAPSHOT_TTL_SECONDS = 60.0
REFORGET_SECONDS = 0.5
_REVOKED = b"revoked"


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    session_id: str
    role: Role
    is_active: bool
    is_verified: bool
    scopes: frozenset[str]
    # The role's permissions plus the user's grants (app.auth.permissions).
    permissions: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role.is_admin


def _key(session_id: str) -> str:
    return f"auth:session:{session_id}"


async def resolve(
    *, cache: Cache, sessionmaker: async_sessionmaker[AsyncSession], claims: AccessClaims
) -> Principal:
    """A database session is opened only on a cache miss: a hit costs no connection."""
    state = await _state(
        cache=cache,
        sessionmaker=sessionmaker,
        user_id=claims.user_id,
        session_id=claims.session_id,
        near=True,
    )
    return Principal(
        id=claims.user_id,
        session_id=claims.session_id,
        role=Role(state["role"]),
        is_active=state["is_active"],
        is_verified=state["is_verified"],
        scopes=claims.scopes,
        permissions=effective_permissions(Role(state["role"]), state.get("grants", ())),
    )


async def session_is_live(
    *,
    cache: Cache,
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: int,
    session_id: str,
) -> bool:
    """The check `resolve` makes, for a connection that outlives its token's check: False
    once the session has ended or the account is disabled. Database errors propagate (an
    outage says nothing about the session)."""
    try:
        state = await _state(
            cache=cache, sessionmaker=sessionmaker, user_id=user_id, session_id=session_id
        )
    except Unauthorized:
        return False
    return bool(state["is_active"])


async def _state(
    *,
    cache: Cache,
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: int,
    session_id: str,
    near: bool = False,
) -> dict[str, Any]:
    snapshot = await cache.get(_key(session_id), near=near)
    if snapshot == _REVOKED:
        raise Unauthorized("Token has been revoked")
    if snapshot is not None:
        state: dict[str, Any] = orjson.loads(snapshot)  # 0.4 µs; the standard library's 2.5
    else:
        async with sessionmaker() as session:
            state = await _load(session=session, session_id=session_id)
        await cache.set(
            _key(session_id), orjson.dumps(state), SNAPSHOT_TTL_SECONDS, only_if_new=True
        )
    if state["user_id"] != user_id:
        raise Unauthorized("Invalid token")
    return state


async def _load(*, session: AsyncSession, session_id: str) -> dict[str, Any]:
    row = (
        await session.execute(
            select(
                User.role,
                User.is_active,
                User.is_verified,
                AuthSession.revoked_at,
                AuthSession.expires_at,
                AuthSession.user_id,
            )
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(AuthSession.id == session_id)
        )
    ).one_or_none()
    if row is None:  # no such session, or its user was deleted (the cascade took it): 401
        raise Unauthorized("Invalid token")
    role, is_active, is_verified, revoked_at, expires_at, user_id = row
    if revoked_at is not None or expires_at <= utcnow():
        raise Unauthorized("Token has been revoked")
    grants = await session.scalars(
        select(UserPermission.permission).where(UserPermission.user_id == user_id)
    )
    return {
        "user_id": user_id,
        "role": str(role),
        "is_active": is_active,
        "is_verified": is_verified,
        "grants": sorted(grants),
    }


async def mark_revoked(*, cache: Cache, session_ids: Iterable[str], ttl: float) -> None:
    """Tombstones for sessions already revoked in the database (call after the commit).

    `ttl` must outlive the longest access token, after which the token is dead anyway. If the
    cache can't be written (Redis unreachable but not restarted, so old snapshots may still
    be there when it returns), keep trying in the background until any snapshot written
    before the revocation has expired by itself.
    """
    failed = [sid for sid in session_ids if not await cache.set(_key(sid), _REVOKED, ttl)]
    if failed:
        task = asyncio.create_task(_retry_tombstones(cache, failed, ttl))
        _retries.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(_retries.discard)


_retries: set[asyncio.Task[None]] = set()


async def _retry_tombstones(cache: Cache, session_ids: list[str], ttl: float) -> None:
    deadline = time.monotonic() + SNAPSHOT_TTL_SECONDS
    delay = 0.25
    while session_ids and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        session_ids = [sid for sid in session_ids if not await cache.set(_key(sid), _REVOKED, ttl)]
        delay = min(delay * 2, 5.0)
    if session_ids:
        logger.error("revocation tombstones not written; snapshots have expired by now")


def forget_near(*, cache: Cache, session_ids: Collection[str] | None) -> None:
    """Sessions ended in another process (None: every session, when the event names a user's
    all): drop this process's near copies of them before anything else reads one."""
    cache.forget_near(None if session_ids is None else [_key(sid) for sid in session_ids])


async def forget(*, cache: Cache, session_ids: Iterable[str]) -> None:
    """Drop live snapshots after a change they hold (email verified): the next request
    reloads from the database. Tombstones are never dropped this way: callers pass live
    sessions only."""
    await cache.delete(*(_key(sid) for sid in session_ids))


async def forget_user(*, session: AsyncSession, cache: Cache, user_id: int) -> None:
    """Drop the snapshots of every live session of a user after a change they hold (their
    permission grants), now and once more after `REFORGET_SECONDS` (see the module doc).
    Call after the commit."""
    live = (
        await session.scalars(
            select(AuthSession.id).where(
                AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
            )
        )
    ).all()
    if not live:
        return
    await forget(cache=cache, session_ids=live)
    task = asyncio.create_task(_forget_later(cache, list(live)))
    _retries.add(task)
    task.add_done_callback(_retries.discard)


async def _forget_later(cache: Cache, session_ids: list[str]) -> None:
    await asyncio.sleep(REFORGET_SECONDS)
    try:
        await forget(cache=cache, session_ids=session_ids)
    except Exception:  # the snapshot expires by itself; never an unretrieved task error
        logger.warning("second snapshot drop failed; grants apply when snapshots expire")
