"""The dependency chain: token → current user → active → verified → admin, plus aliases."""

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from sqlalchemy import select

from app.auth.models import AuthSession
from app.auth.permissions import SCOPE_DESCRIPTIONS, Permission, Scope, has_permission
from app.core.config import Settings
from app.core.db import SessionDep, utcnow
from app.core.errors import Forbidden, Unauthorized
from app.core.security import AccessClaims, InvalidToken, PasswordHasher, decode_access_token
from app.users.models import User

TOKEN_URL = "/api/v1/auth/token"
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL, scopes={str(k): v for k, v in SCOPE_DESCRIPTIONS.items()}, auto_error=False
)


def get_settings_from_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.app.state.hasher
    return hasher


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


async def get_token_claims(token: BearerToken, settings: SettingsDep) -> AccessClaims:
    if not token:
        raise Unauthorized("Not authenticated")
    try:
        return decode_access_token(settings, token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc


TokenClaims = Annotated[AccessClaims, Depends(get_token_claims)]


async def get_current_user(
    security_scopes: SecurityScopes, claims: TokenClaims, session: SessionDep
) -> User:
    """The token's user, if its session is still live; one query checks both.

    Checking the session on every request is what makes logout immediate and durable.
    """
    row = (
        await session.execute(
            select(User, AuthSession.revoked_at, AuthSession.expires_at)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(User.id == claims.user_id, AuthSession.id == claims.session_id)
        )
    ).one_or_none()
    if row is None:
        raise Unauthorized("Invalid token")
    user, revoked_at, expires_at = row
    if revoked_at is not None or expires_at <= utcnow():
        raise Unauthorized("Token has been revoked")
    missing = sorted(set(security_scopes.scopes) - claims.scopes)
    if missing:
        raise Forbidden(f"Missing scope: {' '.join(missing)}")
    return user


async def get_active_user(user: Annotated[User, Security(get_current_user)]) -> User:
    if not user.is_active:
        raise Forbidden("This account is disabled")
    return user


async def get_verified_user(
    user: Annotated[User, Security(get_active_user)], settings: SettingsDep
) -> User:
    if settings.require_verified_email and not user.is_verified:
        raise Forbidden("Verify your email address first")
    return user


async def get_admin_user(
    user: Annotated[User, Security(get_active_user, scopes=[Scope.ADMIN])],
) -> User:
    if not user.is_admin:
        raise Forbidden("Administrator role required")
    return user


async def get_optional_user(
    token: BearerToken, settings: SettingsDep, session: SessionDep
) -> User | None:
    """The caller on public endpoints: anonymous is fine, a bad token is still refused."""
    if not token:
        return None
    claims = await get_token_claims(token, settings)
    return await get_active_user(await get_current_user(SecurityScopes(), claims, session))


def require_permission(permission: Permission) -> object:
    """A dependency for finer rules than scopes: 403 names the missing permission."""

    async def check(user: Annotated[User, Security(get_active_user)]) -> User:
        if not has_permission(user, permission):
            raise Forbidden(f"Missing permission: {permission}")
        return user

    return Depends(check)


CurrentUser = Annotated[User, Security(get_active_user, scopes=[Scope.PROFILE])]
ItemWriter = Annotated[User, Security(get_verified_user, scopes=[Scope.ITEMS_WRITE])]
AdminUser = Annotated[User, Security(get_admin_user)]
OptionalUser = Annotated[User | None, Depends(get_optional_user)]
