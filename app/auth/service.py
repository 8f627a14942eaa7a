"""Accounts and sessions: register, log in, rotate refresh tokens, revoke."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Update, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import principal as principals
from app.auth.errors import (
    AccountDisabled,
    AlreadyRegistered,
    InvalidCredentials,
    InvalidRefreshToken,
)
from app.auth.models import AuthSession, RefreshToken, Role, User
from app.auth.permissions import ROLE_SCOPES, grantable_scopes
from app.auth.principal import Principal
from app.auth.revocation import EndReason, SessionsEnded, announce
from app.auth.schemas import RegisterRequest, SuperuserFields
from app.auth.throttle import LoginThrottle, account_key
from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import utcnow
from app.core.errors import ErrorDetail
from app.core.pubsub import Hub
from app.core.security import (
    HasherBusy,
    PasswordHasher,
    create_access_token,
    hash_opaque_token,
    new_opaque_token,
)
from app.email import service as outbox


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    scopes: list[str]


@dataclass(frozen=True, slots=True)
class Registration:
    """What a sign-up did, for the caller to finish after the answer: `user_id` is the new
    account (None when the address already had one), `email_ids` the mail rows to dispatch."""

    user_id: int | None
    email_ids: list[int]


async def register(
    *, session: AsyncSession, hasher: PasswordHasher, settings: Settings, data: RegisterRequest
) -> Registration:
    """A new account and its welcome mail, or, when the address already has an account, a
    notice to its owner and nothing else: the caller answers the same either way.

    Usernames are public handles (every signed-in user sees them), so a taken one is still a
    409. It is checked first and on its own: were the email checked first, a known username
    paired with candidate addresses would answer 409 for new addresses and 202 for existing
    ones. The password is hashed in both branches, so time does not tell them apart."""
    await _ensure_username_available(session=session, username=data.username)
    hashed_password = await hasher.hash(data.password)
    owner = await _user_by_email(session=session, email=data.email)
    if owner is None:
        user = User(
            username=data.username,
            email=data.email,
            hashed_password=hashed_password,
            full_name=data.full_name,
            age=data.age,
            role=Role.USER,
            is_verified=False,
        )
        session.add(user)
        try:
            await session.flush()  # the user's id, for the mail's row
            welcome = outbox.queue(
                session=session,
                settings=settings,
                recipient=user.email,
                subject=f"Welcome to {settings.app_name}",
                template="welcome",
                context={"name": user.full_name or user.username, "username": user.username},
                user_id=user.id,
            )
            await session.commit()
            return Registration(user_id=user.id, email_ids=[welcome.id])
        except IntegrityError:  # lost a race with a concurrent registration: which one?
            await session.rollback()
            await _ensure_username_available(session=session, username=data.username)
            owner = await _user_by_email(session=session, email=data.email)
    # A disabled account can neither sign in nor reset its password: no mail, same answer.
    # (None after a lost race only if the other account was deleted meanwhile.)
    if owner is None or not owner.is_active:
        return Registration(user_id=None, email_ids=[])
    notice = outbox.queue(
        session=session,
        settings=settings,
        recipient=owner.email,
        subject=f"Someone tried to sign up to {settings.app_name} with your address",
        template="signup_attempt",
        context={"name": owner.full_name or owner.username, "username": owner.username},
        user_id=owner.id,
    )
    await session.commit()
    return Registration(user_id=None, email_ids=[notice.id])


async def _user_by_email(*, session: AsyncSession, email: str) -> User | None:
    statement = select(User).where(User.email == email.lower())
    return (await session.execute(statement)).scalar_one_or_none()


async def _ensure_username_available(*, session: AsyncSession, username: str) -> None:
    taken = await session.execute(
        select(User.id).where(func.lower(User.username) == username.lower())
    )
    if taken.first() is not None:
        raise AlreadyRegistered(
            [ErrorDetail(field="body.username", message="already taken", type="taken")],
            message="Username is already taken",
        )


async def _create_user(
    *,
    session: AsyncSession,
    hasher: PasswordHasher,
    username: str,
    email: str,
    password: str,
    full_name: str | None = None,
    role: Role = Role.USER,
    is_verified: bool = False,
) -> User:
    """A user made by the operator (no mail: the operator chose the address)."""
    await _ensure_available(session=session, username=username, email=email)
    user = User(
        username=username,
        email=email,
        hashed_password=await hasher.hash(password),
        full_name=full_name,
        role=role,
        is_verified=is_verified,
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:  # lost a race with a concurrent registration
        await session.rollback()
        raise AlreadyRegistered() from exc
    return user


async def _ensure_available(*, session: AsyncSession, username: str, email: str) -> None:
    taken = (
        await session.execute(
            select(User.username, User.email).where(
                or_(func.lower(User.username) == username.lower(), User.email == email)
            )
        )
    ).all()
    details = []
    if any(row.username.lower() == username.lower() for row in taken):
        details.append(ErrorDetail(field="body.username", message="already taken", type="taken"))
    if any(row.email == email for row in taken):
        details.append(ErrorDetail(field="body.email", message="already registered", type="taken"))
    if details:
        raise AlreadyRegistered(details)


async def get_by_login(*, session: AsyncSession, login: str) -> User | None:
    condition = (
        User.email == login.lower() if "@" in login else func.lower(User.username) == login.lower()
    )
    return (await session.execute(select(User).where(condition))).scalar_one_or_none()


async def authenticate(
    *,
    session: AsyncSession,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    login: str,
    password: str,
) -> User:
    """The user for these credentials; unknown user and wrong password look the same (and
    count against the same kind of failure budget: app.auth.throttle)."""
    user = await get_by_login(session=session, login=login)
    attempt = await throttle.attempt(account_key(user_id=user.id if user else None, login=login))
    try:
        valid, upgraded_hash = await hasher.verify_and_update(
            password, user.hashed_password if user else None
        )
    except HasherBusy:
        await throttle.not_checked(attempt)  # a 503 under load is no failed guess
        raise
    if user is None or not valid:
        raise InvalidCredentials()
    await throttle.succeeded(attempt)  # the password was right, whatever comes next
    if not user.is_active:
        raise AccountDisabled()
    if upgraded_hash is not None:  # an old bcrypt (or weaker argon2) hash: store Argon2id now
        user.hashed_password = upgraded_hash
    user.last_login_at = utcnow()
    await session.commit()
    return user


async def start_session(
    *,
    session: AsyncSession,
    settings: Settings,
    user: User,
    requested_scopes: set[str] | None,
    user_agent: str | None = None,
) -> TokenPair:
    scopes = grantable_scopes(user.role, requested_scopes)
    auth_session = AuthSession(
        id=uuid.uuid4().hex,
        user_id=user.id,
        expires_at=utcnow() + timedelta(days=settings.refresh_token_expire_days),
        scopes=" ".join(scopes),
        user_agent=(user_agent or "")[:255] or None,
    )
    session.add(auth_session)
    pair = _issue(session=session, settings=settings, auth_session=auth_session, scopes=scopes)
    await session.commit()
    return pair


def _issue(
    *, session: AsyncSession, settings: Settings, auth_session: AuthSession, scopes: list[str]
) -> TokenPair:
    raw_refresh = new_opaque_token()
    session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=hash_opaque_token(raw_refresh),
            expires_at=auth_session.expires_at,
        )
    )
    access, expires_in = create_access_token(
        settings, user_id=auth_session.user_id, session_id=auth_session.id, scopes=scopes
    )
    return TokenPair(access, raw_refresh, expires_in, scopes)


async def rotate_refresh_token(
    *, session: AsyncSession, cache: Cache, hub: Hub, settings: Settings, raw_token: str
) -> TokenPair:
    """Trade a refresh token for a new pair. A token works once: a second use means it was
    stolen (or leaked), so the whole family is revoked and both parties must log in again."""
    row = (
        await session.execute(
            select(RefreshToken, AuthSession, User)
            .join(AuthSession, RefreshToken.session_id == AuthSession.id)
            .join(User, AuthSession.user_id == User.id)
            .where(RefreshToken.token_hash == hash_opaque_token(raw_token))
        )
    ).one_or_none()
    if row is None:
        raise InvalidRefreshToken()
    token, auth_session, user = row
    now = utcnow()
    if auth_session.revoked_at is not None or auth_session.expires_at <= now:
        raise InvalidRefreshToken()
    # Mark used with a conditional UPDATE: of two concurrent uses exactly one wins.
    claimed = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        revoked = await revoke_session(
            session=session, session_id=auth_session.id, reason="reuse_detected"
        )
        await commit_and_publish_revocations(
            session=session,
            cache=cache,
            hub=hub,
            settings=settings,
            user_id=user.id,
            session_ids=revoked,
            reason=EndReason.REFRESH_REUSE,
        )
        raise InvalidRefreshToken("Refresh token reuse detected; the session has been revoked")
    if not user.is_active:
        await session.commit()
        raise InvalidRefreshToken()
    # A role may have been lowered since login: never hand back more than it allows now.
    scopes = sorted(set(auth_session.scopes.split()) & ROLE_SCOPES[user.role])
    pair = _issue(session=session, settings=settings, auth_session=auth_session, scopes=scopes)
    await session.commit()
    return pair


async def revoke_session(  # the caller commits, then publishes the returned ids
    *, session: AsyncSession, session_id: str, reason: str, user_id: int | None = None
) -> list[str]:
    statement = update(AuthSession).where(
        AuthSession.id == session_id, AuthSession.revoked_at.is_(None)
    )
    if user_id is not None:
        statement = statement.where(AuthSession.user_id == user_id)
    return await _revoke(session, statement, reason)


async def revoke_all_sessions(
    *, session: AsyncSession, user_id: int, reason: str, keep_session_id: str | None = None
) -> list[str]:
    statement = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep_session_id is not None:
        statement = statement.where(AuthSession.id != keep_session_id)
    return await _revoke(session, statement, reason)


async def _revoke(session: AsyncSession, statement: Update, reason: str) -> list[str]:
    result = await session.execute(
        statement.values(revoked_at=utcnow(), revoked_reason=reason).returning(AuthSession.id)
    )
    return list(result.scalars().all())


async def purge_ended_sessions(*, session: AsyncSession, ended_before: datetime) -> int:
    """Delete sessions that ended (expired, or revoked) before the cutoff, with their refresh
    tokens (by cascade); commits. Tokens of a deleted session are refused like revoked ones."""
    result = await session.execute(
        delete(AuthSession).where(
            or_(AuthSession.expires_at < ended_before, AuthSession.revoked_at < ended_before)
        )
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


async def commit_and_publish_revocations(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    user_id: int,
    session_ids: list[str],
    reason: EndReason,
    whole_account: bool = False,
) -> None:
    """Commit what the caller changed, then make every API process stop accepting these
    sessions' access tokens and end the WebSockets and SSE streams they opened;
    `whole_account` ends every connection of the user, whatever session it holds (the account
    is disabled or gone). Never the other way round: a reader between a tombstone and the
    commit would load the session, still live in the database, back into the cache."""
    await session.commit()
    ttl = settings.access_token_expire_minutes * 60 + 60
    await principals.mark_revoked(cache=cache, session_ids=session_ids, ttl=ttl)
    event = SessionsEnded(
        user_id=user_id,
        session_ids=None if whole_account else frozenset(session_ids),
        reason=reason,
    )
    await announce(hub=hub, event=event)


async def logout(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    principal: Principal,
    refresh_token: str | None,
) -> None:
    """End this session; a refresh token of another of the user's sessions ends that one too."""
    revoked = []
    if refresh_token is not None:
        other = (
            await session.execute(
                select(RefreshToken.session_id).where(
                    RefreshToken.token_hash == hash_opaque_token(refresh_token)
                )
            )
        ).scalar_one_or_none()
        if other is not None and other != principal.session_id:
            revoked += await revoke_session(
                session=session, session_id=other, reason="logout", user_id=principal.id
            )
    revoked += await revoke_session(
        session=session, session_id=principal.session_id, reason="logout"
    )
    await commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=principal.id,
        session_ids=revoked,
        reason=EndReason.LOGOUT,
    )


async def logout_all(
    *, session: AsyncSession, cache: Cache, hub: Hub, settings: Settings, user_id: int
) -> None:
    revoked = await revoke_all_sessions(session=session, user_id=user_id, reason="logout_all")
    await commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=user_id,
        session_ids=revoked,
        reason=EndReason.LOGOUT_ALL,
    )


async def change_password(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    hasher: PasswordHasher,
    user: User,
    current_session_id: str,
    current_password: str,
    new_password: str,
) -> None:
    valid, _ = await hasher.verify_and_update(current_password, user.hashed_password)
    if not valid:
        raise InvalidCredentials("The current password is incorrect", status=400)
    user.hashed_password = await hasher.hash(new_password)
    revoked = await revoke_all_sessions(
        session=session,
        user_id=user.id,
        reason="password_changed",
        keep_session_id=current_session_id,
    )
    # The new hash and the revocations land together or not at all.
    await commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=user.id,
        session_ids=revoked,
        reason=EndReason.PASSWORD_CHANGED,
    )


async def ensure_superuser(
    *,
    session: AsyncSession,
    hasher: PasswordHasher,
    username: str,
    email: str,
    password: str,
) -> tuple[User, bool]:
    """The superuser with this username, created if missing; (user, created).

    The operator picks this name, so reserved names such as `admin` are allowed here.
    """
    existing = await get_by_login(session=session, login=username)
    if existing is not None:
        return existing, False
    fields = SuperuserFields.validate_python(
        {"username": username, "email": email, "password": password}
    )
    user = await _create_user(
        session=session,
        hasher=hasher,
        username=fields.username,
        email=fields.email,
        password=fields.password,
        role=Role.SUPERUSER,
        is_verified=True,
    )
    return user, True
