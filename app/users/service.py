from collections.abc import Sequence
from typing import Literal

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import service as auth_service
from app.auth.errors import MissingPermission
from app.auth.models import Role, User
from app.auth.permissions import Permission, has_permission
from app.auth.principal import Principal
from app.core.cache import Cache
from app.core.config import Settings
from app.core.pagination import order_clauses, paginate
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
    settings: Settings,
    actor: Principal,
    target: User,
    data: UserAdminUpdate,
) -> User:
    _check_may_manage(actor, target, data)
    if data.role is not None:
        target.role = data.role
    if data.is_active is not None:
        target.is_active = data.is_active
    revoked: list[str] = []
    if data.is_active is False or data.role is not None:
        # Tokens carry scopes granted for the old role or state: make the user log in again.
        revoked = await auth_service.revoke_all_sessions(
            session=session, user_id=target.id, reason="account_changed"
        )
    await session.commit()
    await auth_service.publish_revocations(cache=cache, settings=settings, session_ids=revoked)
    return target


async def deactivate(
    *, session: AsyncSession, cache: Cache, settings: Settings, actor: Principal, target: User
) -> None:
    await admin_update(
        session=session,
        cache=cache,
        settings=settings,
        actor=actor,
        target=target,
        data=UserAdminUpdate(is_active=False),
    )


async def hard_delete(*, session: AsyncSession, actor: Principal, target: User) -> None:
    if not has_permission(actor, Permission.HARD_DELETE_USER):
        raise MissingPermission(Permission.HARD_DELETE_USER)
    if actor.id == target.id:
        raise CannotDeleteSelf()
    await session.execute(delete(User).where(User.id == target.id))
    await session.commit()
