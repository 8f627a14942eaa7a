"""Per-user permission grants an admin manages (the role's permissions plus these).

A change is committed, logged for the audit trail (who, whom, what), and then the user's
cached principal snapshots are dropped (app.auth.principal.forget_user), so every API process
applies it on the user's next request instead of when the snapshot expires.
"""

import logging
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import principal as principals
from app.auth.models import User, UserPermission
from app.auth.permissions import ROLE_PERMISSIONS, Permission, effective_permissions
from app.auth.principal import Principal
from app.core.cache import Cache
from app.core.db import utcnow
from app.users.errors import CannotGrantUnheld
from app.users.schemas import PermissionGrantRead, UserPermissionsRead

logger = logging.getLogger("app.users.permissions")


async def read(*, session: AsyncSession, user: User) -> UserPermissionsRead:
    rows = (
        await session.scalars(
            select(UserPermission)
            .where(UserPermission.user_id == user.id)
            .order_by(UserPermission.permission)
        )
    ).all()
    grants = [PermissionGrantRead.model_validate(row) for row in rows]
    return UserPermissionsRead(
        user_id=user.id,
        role=user.role,
        role_permissions=sorted(ROLE_PERMISSIONS[user.role]),
        grants=grants,
        effective=sorted(effective_permissions(user.role, (g.permission for g in grants))),
    )


def _check_may_change(actor: Principal, permission: Permission) -> None:
    if permission not in actor.permissions:
        raise CannotGrantUnheld(permission)


async def grant(
    *, session: AsyncSession, cache: Cache, actor: Principal, user: User, permission: Permission
) -> UserPermissionsRead:
    """Idempotent: granting a held grant keeps its first date and granter."""
    _check_may_change(actor, permission)
    values = {
        "user_id": user.id,
        "permission": str(permission),
        "granted_at": utcnow(),
        "granted_by": actor.id,
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    result = await session.execute(insert(UserPermission).values(**values).on_conflict_do_nothing())
    return await _committed(session, cache, result, "granted", actor, user, permission)


async def revoke(
    *, session: AsyncSession, cache: Cache, actor: Principal, user: User, permission: Permission
) -> UserPermissionsRead:
    """Idempotent: revoking a grant the user doesn't have changes nothing (the role's
    permissions are not grants: change the role for those)."""
    _check_may_change(actor, permission)
    result = await session.execute(
        delete(UserPermission).where(
            UserPermission.user_id == user.id, UserPermission.permission == str(permission)
        )
    )
    return await _committed(session, cache, result, "revoked", actor, user, permission)


async def _committed(
    session: AsyncSession,
    cache: Cache,
    result: Any,
    change: str,
    actor: Principal,
    user: User,
    permission: Permission,
) -> UserPermissionsRead:
    """Commit a grant or revocation; if a row changed, log it and drop the user's snapshots
    (after the commit: a reader must not cache the old grants again from the database)."""
    await session.commit()
    if getattr(result, "rowcount", 0):
        logger.info(
            f"permission {change}",
            extra={"actor_id": actor.id, "user_id": user.id, "permission": str(permission)},
        )
        await principals.forget_user(session=session, cache=cache, user_id=user.id)
    return await read(session=session, user=user)
