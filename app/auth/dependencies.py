"""Who is calling: token → principal (not revoked, scopes) → active → verified → admin, as one
dependency per route (`Caller`).

Routes take a `Principal` (who is calling, from the token and one cache lookup) unless they
need the user's row, for which `CurrentUser` loads it.
"""

from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from starlette.requests import HTTPConnection

from app.auth import principal as principals
from app.auth.errors import (
    AccountDisabled,
    AdminRequired,
    EmailNotVerified,
    MissingPermission,
    MissingScope,
)
from app.auth.models import User
from app.auth.permissions import SCOPE_DESCRIPTIONS, Permission, Scope, missing_permissions
from app.auth.principal import Principal
from app.auth.throttle import LoginThrottle
from app.core.dependencies import Services, SessionDep, services_of
from app.core.errors import Unauthorized
from app.core.limit_keys import address_key
from app.core.limits import client_of, enforce
from app.core.request_context import set_user_id
from app.core.security import AccessClaims, InvalidToken

# Under API_V1_PREFIX, which is per app while this scheme is per process: each app's OpenAPI
# document replaces this path with the full one (app.main).
TOKEN_PATH = "/auth/token"
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_PATH, scopes={str(k): v for k, v in SCOPE_DESCRIPTIONS.items()}, auto_error=False
)


BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def _decode(token: str | None, services: Services) -> AccessClaims:
    if not token:
        raise Unauthorized("Not authenticated")
    try:
        return services.token_verifier.decode(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc


async def get_principal(
    security_scopes: SecurityScopes, request: Request, token: BearerToken
) -> Principal:
    # The services are read directly rather than through more dependencies: this runs on every
    # authenticated request, and each dependency costs FastAPI real work to solve.
    services = services_of(request)
    claims = _decode(token, services)
    principal = await principals.resolve(
        cache=services.cache, sessionmaker=services.sessionmaker, claims=claims
    )
    set_user_id(request.scope, principal.id)
    missing = sorted(set(security_scopes.scopes) - principal.scopes)
    if missing:
        raise MissingScope(missing)
    return principal


def require_active(principal: Principal) -> Principal:
    if not principal.is_active:
        raise AccountDisabled()
    return principal


class Caller(OAuth2PasswordBearer):
    """The caller, as one dependency: token → principal (not revoked, with the route's scopes)
    → active → verified (if `verified` and REQUIRE_VERIFIED_EMAIL) → admin (if `admin`), in
    that order, so each failure answers as the chain of dependencies it replaces did.

    FastAPI works out every dependency's cache key and kind again on each request, so the
    number of dependencies is what an authenticated request pays for (bench/RESULTS.md: the
    chain of four this was cost ~20 µs in process). It is the bearer scheme itself, so each
    route's OpenAPI security requirement (scheme and scopes) is the one the chain declared.
    The scopes come from `Security(caller, scopes=[...])`; `optional` answers None without a
    token (a bad token is still refused)."""

    def __init__(self, *, verified: bool = False, admin: bool = False, optional: bool = False):
        super().__init__(
            tokenUrl=TOKEN_PATH,
            scopes={str(k): v for k, v in SCOPE_DESCRIPTIONS.items()},
            scheme_name=type(oauth2_scheme).__name__,  # one scheme in the document
            auto_error=False,
        )
        self.verified, self.admin, self.optional = verified, admin, optional

    async def __call__(  # type: ignore[override]  # the principal, not the token
        self, request: Request, security_scopes: SecurityScopes
    ) -> Principal | None:
        token = await super().__call__(request)
        if not token and self.optional:
            return None
        principal = require_active(await get_principal(security_scopes, request, token))
        if (
            self.verified
            and not principal.is_verified
            and services_of(request).settings.require_verified_email
        ):
            raise EmailNotVerified()
        if self.admin and not principal.is_admin:
            raise AdminRequired()
        return principal


# One instance per kind, so a route that meets the same one twice solves it once.
_active = Caller()
_verified = Caller(verified=True)


async def get_current_user(
    principal: Annotated[Principal, Security(_active, scopes=[Scope.PROFILE])],
    session: SessionDep,
) -> User:
    user = await session.get(User, principal.id)
    if user is None or not user.is_active:
        raise Unauthorized("Invalid token")
    return user


class RequirePermissions:
    """A route's required permissions, as a dependency that returns the principal:

        editor: Annotated[Principal, Depends(RequirePermissions(Permission.ARTICLES_WRITE))]

    403 (`missing_permission`) lists every permission the caller lacks. Effective permissions
    (role plus grants) come with the principal's snapshot: the check costs no query. The
    principal is the active one with the `profile` scope, as `CurrentPrincipal`."""

    def __init__(self, *permissions: Permission) -> None:
        if not permissions:
            raise ValueError("RequirePermissions needs at least one permission")
        self.permissions = frozenset(permissions)

    def __repr__(self) -> str:
        return f"RequirePermissions({', '.join(sorted(self.permissions))})"

    async def __call__(
        self, principal: Annotated[Principal, Security(_active, scopes=[Scope.PROFILE])]
    ) -> Principal:
        return self.check(principal)

    def check(self, principal: Principal) -> Principal:
        """For a dependency whose need depends on the request (`?hard=true`)."""
        missing = missing_permissions(principal, self.permissions)
        if missing:
            raise MissingPermission(missing)
        return principal


async def limit_login(request: Request, response: Response) -> None:
    """Attempts per client, whatever the account (spraying many accounts from one client);
    failures per account are counted by the login itself (app.auth.throttle), which knows the
    account and whether the password was right."""
    await enforce(request, response, services_of(request).policies.login, client_of(request))


async def get_login_throttle(connection: HTTPConnection) -> LoginThrottle:
    return LoginThrottle.of(connection)


async def _limit_mails_to_body_address(request: Request, response: Response) -> None:
    """The reset policy's per-mailbox budget (every spelling of it: address_key), shared by
    every anonymous request that mails an address: nobody floods one inbox from many
    clients, whichever of these routes they use."""
    try:
        body = await request.json()  # FastAPI has read (and cached) the body already
    except ValueError:
        return  # the route answers 422
    if isinstance(body, dict) and isinstance(body.get("email"), str):
        policy = services_of(request).policies.password_reset
        await enforce(request, response, policy, "email:" + address_key(body["email"]))


async def limit_register(request: Request, response: Response) -> None:
    """Per client, and per target mailbox: a sign-up mails the address (a welcome, or a
    notice to its owner). Counted the same whether or not the address has an account, so a
    429 tells nothing either."""
    await enforce(request, response, services_of(request).policies.register, client_of(request))
    await _limit_mails_to_body_address(request, response)


async def limit_password_reset(request: Request, response: Response) -> None:
    """Per client and per target mailbox."""
    policy = services_of(request).policies.password_reset
    await enforce(request, response, policy, client_of(request))
    await _limit_mails_to_body_address(request, response)


async def limit_verification(
    request: Request, response: Response, user: Annotated[User, Depends(get_current_user)]
) -> None:
    """Verification links go to the caller's own mailbox: the reset policy's per-address
    budget bounds them too, so reset and verification mails together can't flood one inbox.
    (`get_current_user` is solved once per request: the route's own `CurrentUser` reuses it.)"""
    policy = services_of(request).policies.password_reset
    await enforce(request, response, policy, "email:" + address_key(user.email))


CurrentPrincipal = Annotated[Principal, Security(_active, scopes=[Scope.PROFILE])]
CurrentUser = Annotated[User, Depends(get_current_user)]
LoginThrottleDep = Annotated[LoginThrottle, Depends(get_login_throttle)]
ItemWriter = Annotated[Principal, Security(_verified, scopes=[Scope.ITEMS_WRITE])]
# Who may write posts and comments: verified, with the profile scope.
VerifiedPrincipal = Annotated[Principal, Security(_verified, scopes=[Scope.PROFILE])]
AdminPrincipal = Annotated[Principal, Security(Caller(admin=True), scopes=[Scope.ADMIN])]
# The caller on public endpoints: anonymous is fine, a bad token is still refused.
OptionalPrincipal = Annotated[Principal | None, Depends(Caller(optional=True))]
