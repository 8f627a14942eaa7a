from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import bindparam, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auth import service as auth_service
from app.auth.errors import MissingPermission
from app.auth.models import AuthSession, Role, User
from app.auth.permissions import Permission, has_permission
from app.auth.principal import Principal
from app.auth.revocation import EndReason
from app.auth.schemas import UserPrivate
from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import read_one, utcnow
from app.core.pagination import order_clauses, paginate
from app.core.pubsub import Hub
from app.users.errors import CannotDeleteSelf, CannotDemoteSelf, UserNotFound
from app.users.schemas import UserAdminUpdate, UserSelfUpdate

UserOrder = Literal[
    "id", "-id", "username", "-username", "email", "-email", "created_at", "-created_at"
]
_ORDER_COLUMNS = {
    "id": User.id,
    "username": User.username,
    "email": User.email,
    "created_at": User.created_at,
}


_users: Any = User.__table__
# What /users/me shows, read as plain columns (the schema's fields, nothing else). Built once
# with a bound parameter: building the WHERE clause per call made SQLAlchemy compute the
# statement's cache key again every time, half of the statement's CPU (143 -> 70 us a call
# in process, bench/RESULTS.md).
_READ_PRIVATE = select(*(_users.c[name] for name in UserPrivate.model_fields)).where(
    _users.c.id == bindparam("user_id")
)


async def read_private(*, engine: AsyncEngine, user_id: int) -> Mapping[str, Any] | None:
    """The caller's own account, for /users/me, the most frequent authenticated read: one
    statement outside any transaction (a lone SELECT needs no BEGIN and ROLLBACK round trips),
    with no ORM identity map or instance to build (issue 14's profile had SQLAlchemy's ORM and
    transaction handling at ~40% of this request's CPU), on the driver (`read_one`)."""
    return await read_one(engine, _READ_PRIVATE, user_id=user_id)


async def get(*, session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


async def update_me(*, session: AsyncSession, user: User, data: UserSelfUpdate) -> User:
    for field, value in data.model_dump(exclude_unset=True).items():
        setattr(user, field, value)
    await session.commit()
    return user


async def list_users(
    *,
    session: AsyncSession,
    page: int,
    per_page: int,
    search: str | None,
    is_active: bool | None,
    role: Role | None,
    order_by: UserOrder,
) -> tuple[Sequence[User], int]:
    statement = select(User)
    if search:
        statement = statement.where(
            or_(
                User.username.icontains(search, autoescape=True),
                User.email.icontains(search, autoescape=True),
                User.full_name.icontains(search, autoescape=True),
            )
        )
    if is_active is not None:
        statement = statement.where(User.is_active == is_active)
    if role is not None:
        statement = statement.where(User.role == role)
    statement = statement.order_by(*order_clauses(order_by, _ORDER_COLUMNS, User.id))
    return await paginate(session, statement, page=page, per_page=per_page)


def _check_may_manage(actor: Principal, target: User, data: UserAdminUpdate) -> None:
    privileged = (Role.ADMIN, Role.SUPERUSER)
    touches_privileged = target.role in privileged or data.role in privileged
    if touches_privileged and not has_permission(actor, Permission.GRANT_PRIVILEGED_ROLES):
        raise MissingPermission(Permission.GRANT_PRIVILEGED_ROLES)
    if actor.id == target.id and (data.role not in (None, actor.role) or data.is_active is False):
        raise CannotDemoteSelf()


async def admin_update(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    actor: Principal,
    target: User,
    data: UserAdminUpdate,
    reason: EndReason | None = None,
) -> User:
    """`reason`: what ends the sessions when this deactivates (a soft delete says so)."""
    _check_may_manage(actor, target, data)
    if data.role is not None:
        target.role = data.role
    if data.is_active is not None:
        target.is_active = data.is_active
    if data.is_active is not False and data.role is None:
        await session.commit()
        return target
    # Tokens carry scopes granted for the old role or state: make the user log in again.
    revoked = await auth_service.revoke_all_sessions(
        session=session, user_id=target.id, reason="account_changed"
    )
    disabled = data.is_active is False
    await auth_service.commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=target.id,
        session_ids=revoked,
        reason=(reason or EndReason.DEACTIVATED) if disabled else EndReason.ROLE_CHANGED,
        whole_account=disabled,
    )
    return target


async def deactivate(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    actor: Principal,
    target: User,
) -> None:
    """The soft delete: the account stays (an admin can reactivate it) but nothing works."""
    await admin_update(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        actor=actor,
        target=target,
        data=UserAdminUpdate(is_active=False),
        reason=EndReason.DELETED,
    )


async def hard_delete(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    actor: Principal,
    target: User,
) -> None:
    if not has_permission(actor, Permission.HARD_DELETE_USER):
        raise MissingPermission(Permission.HARD_DELETE_USER)
    if actor.id == target.id:
        raise CannotDeleteSelf()
    # The row lock holds back a concurrent login (its session's foreign key waits on it), so
    # the sessions listed here are all the cascade removes: each gets a tombstone below.
    await session.execute(select(User.id).where(User.id == target.id).with_for_update())
    live = (
        await session.execute(
            select(AuthSession.id).where(
                AuthSession.user_id == target.id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > utcnow(),
            )
        )
    ).scalars()
    session_ids = list(live)
    await session.execute(delete(User).where(User.id == target.id))
    # Without tombstones the sessions' cached snapshots would keep the tokens working (on
    # rows that are gone) until they expire.
    await auth_service.commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=target.id,
        session_ids=session_ids,
        reason=EndReason.DELETED,
        whole_account=True,
    )
