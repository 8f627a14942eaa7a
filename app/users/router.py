from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.auth.dependencies import (
    AdminPrincipal,
    CurrentPrincipal,
    CurrentUser,
    RequirePermissions,
)
from app.auth.models import Role
from app.auth.permissions import Permission
from app.auth.principal import Principal
from app.auth.schemas import UserPrivate, UserPublic
from app.core.dependencies import (
    CacheDep,
    HubDep,
    SessionDep,
    SettingsDep,
    services_of,
)
from app.core.errors import Unauthorized
from app.core.schemas import Page, PageNumber, PerPage, SearchTerm
from app.users import permissions, service
from app.users.dependencies import UserById
from app.users.schemas import (
    PermissionGrant,
    UserAdminUpdate,
    UserPermissionsRead,
    UserSelfUpdate,
)

router = APIRouter(prefix="/users", tags=["users"])


# /profile is the seeds' name for the same resource: one handler, two paths.
@router.get("/me", response_model=UserPrivate)
@router.get("/profile", response_model=UserPrivate)
async def read_me(principal: CurrentPrincipal, request: Request) -> Response:
    """Your own account."""
    services = services_of(request)  # on the hottest routes: see app.core.dependencies
    # The checks CurrentUser makes, on one plain read; serialized once here (FastAPI would
    # validate the model again on the way out).
    row = await service.read_private(engine=services.engine, user_id=principal.id)
    if row is None or not row["is_active"]:
        raise Unauthorized("Invalid token")
    return Response(UserPrivate.model_validate(dict(row)).model_dump_json(),
                    media_type="application/json")  # fmt: skip


@router.patch("/me", response_model=UserPrivate)
@router.patch("/profile", response_model=UserPrivate)
async def update_me(data: UserSelfUpdate, user: CurrentUser, session: SessionDep) -> UserPrivate:
    """Change your full name, bio or age; role and flags can't be changed here."""
    return UserPrivate.model_validate(
        await service.update_me(session=session, user=user, data=data)
    )


@router.get("/", response_model=Page[UserPrivate])
async def list_users(
    _admin: AdminPrincipal,
    session: SessionDep,
    page: PageNumber = 1,
    per_page: PerPage = 20,
    search: SearchTerm = None,
    is_active: bool | None = None,
    role: Role | None = None,
    order_by: Annotated[service.UserOrder, Query()] = "id",
) -> Page[UserPrivate]:
    """All users (admin), searchable over username, email and full name."""
    users, total = await service.list_users(
        session=session,
        page=page,
        per_page=per_page,
        search=search,
        is_active=is_active,
        role=role,
        order_by=order_by,
    )
    return Page[UserPrivate].build(
        [UserPrivate.model_validate(u) for u in users], total=total, page=page, per_page=per_page
    )


@router.get("/{user_id}", response_model=UserPrivate | UserPublic)
async def read_user(target: UserById, caller: CurrentPrincipal) -> UserPrivate | UserPublic:
    """A user: the public view, or the private one for yourself and admins."""
    if caller.id == target.id or caller.is_admin:
        return UserPrivate.model_validate(target)
    return UserPublic.model_validate(target)


@router.patch("/{user_id}", response_model=UserPrivate)
async def update_user(
    data: UserAdminUpdate,
    target: UserById,
    admin: AdminPrincipal,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
) -> UserPrivate:
    """Change a user's role or active flag (admin); reactivate with `is_active: true`.
    Either change ends the user's sessions and live connections (4403 for a role change,
    4401 for a deactivation)."""
    updated = await service.admin_update(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        actor=admin,
        target=target,
        data=data,
    )
    return UserPrivate.model_validate(updated)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(
    target: UserById,
    admin: AdminPrincipal,
    session: SessionDep,
    cache: CacheDep,
    hub: HubDep,
    settings: SettingsDep,
    hard: bool = False,
) -> None:
    """Deactivate a user (admin), or with `hard=true` delete them and their data (superuser);
    either way their tokens answer 401 at once and their live connections close (4401)."""
    remove = service.hard_delete if hard else service.deactivate
    await remove(
        session=session, cache=cache, hub=hub, settings=settings, actor=admin, target=target
    )


admin_router = APIRouter(prefix="/admin/users", tags=["admin"])
UserManager = Annotated[Principal, Depends(RequirePermissions(Permission.MANAGE_USERS))]


@admin_router.get("/{user_id}/permissions", response_model=UserPermissionsRead)
async def read_user_permissions(
    target: UserById, _admin: UserManager, session: SessionDep
) -> UserPermissionsRead:
    """A user's role permissions, grants (who granted each and when) and effective set."""
    return await permissions.read(session=session, user=target)


@admin_router.post("/{user_id}/permissions", response_model=UserPermissionsRead)
async def grant_user_permission(
    target: UserById,
    data: PermissionGrant,
    admin: UserManager,
    session: SessionDep,
    cache: CacheDep,
) -> UserPermissionsRead:
    """Grant a permission beyond the user's role (idempotent; only one you hold yourself).
    It applies to the user's live tokens at once, in every API process."""
    return await permissions.grant(
        session=session, cache=cache, actor=admin, user=target, permission=data.permission
    )


@admin_router.delete("/{user_id}/permissions", response_model=UserPermissionsRead)
async def revoke_user_permission(
    target: UserById,
    permission: Annotated[Permission, Query(description="The grant to revoke")],
    admin: UserManager,
    session: SessionDep,
    cache: CacheDep,
) -> UserPermissionsRead:
    """Revoke a grant (idempotent); the role's own permissions stay (change the role).
    The permission is a query parameter: its `:` is never a path segment's to escape."""
    return await permissions.revoke(
        session=session, cache=cache, actor=admin, user=target, permission=permission
    )
