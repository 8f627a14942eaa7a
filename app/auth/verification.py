"""Email verification and password reset (AUTH-9): single-use, expiring tokens sent by mail.

A token is 32 random bytes, stored only as its SHA-256. It is spent by one conditional
UPDATE (unused, unexpired, right purpose), so of two concurrent uses exactly one wins; a new
request spends the user's older tokens of the same purpose. Links point at two small pages
that POST the token: a GET that spent it would be eaten by mail scanners opening links.
"""

import logging
from datetime import timedelta
from urllib.parse import urlencode

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth import principal as principals
from app.auth import service as auth_service
from app.auth.errors import AlreadyVerified
from app.auth.models import ActionToken, AuthSession, TokenPurpose, User
from app.auth.revocation import EndReason
from app.auth.throttle import LoginThrottle, account_key
from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import utcnow
from app.core.errors import AppError
from app.core.pubsub import Hub
from app.core.security import PasswordHasher, hash_opaque_token, new_opaque_token
from app.email import service as outbox
from app.jobs.service import Jobs

logger = logging.getLogger("app.auth")
PAGES = {TokenPurpose.VERIFY_EMAIL: "/verify-email", TokenPurpose.RESET_PASSWORD: "/reset-password"}


class InvalidActionToken(AppError):
    status, code = 400, "invalid_token"

    def __init__(self) -> None:
        super().__init__("This link is invalid, expired or already used")


async def _issue(
    session: AsyncSession, settings: Settings, user: User, purpose: TokenPurpose, minutes: int
) -> str:
    """A new token (the caller commits); older unused ones of this purpose stop working."""
    now = utcnow()
    await session.execute(
        update(ActionToken)
        .where(
            ActionToken.user_id == user.id,
            ActionToken.purpose == purpose,
            ActionToken.used_at.is_(None),
        )
        .values(used_at=now)
    )
    raw = new_opaque_token()
    session.add(
        ActionToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=hash_opaque_token(raw),
            created_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
    )
    base = settings.public_base_url.rstrip("/")
    return f"{base}{PAGES[purpose]}?{urlencode({'token': raw})}"


async def _spend(session: AsyncSession, raw: str, purpose: TokenPurpose) -> int:
    """The token's user, marking it used (not committed); invalid ones raise."""
    now = utcnow()
    result = await session.execute(
        update(ActionToken)
        .where(
            ActionToken.token_hash == hash_opaque_token(raw),
            ActionToken.purpose == purpose,
            ActionToken.used_at.is_(None),
            ActionToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(ActionToken.user_id)
    )
    user_id = result.scalar_one_or_none()
    if user_id is None:
        await session.rollback()
        raise InvalidActionToken()
    return user_id


async def request_verification(
    *, session: AsyncSession, settings: Settings, jobs: Jobs, user: User
) -> None:
    if user.is_verified:
        raise AlreadyVerified()
    minutes = settings.email_verify_token_expire_minutes
    link = await _issue(session, settings, user, TokenPurpose.VERIFY_EMAIL, minutes)
    email = outbox.queue(
        session=session,
        settings=settings,
        recipient=user.email,
        subject=f"Confirm your email address for {settings.app_name}",
        template="verify",
        context={"name": user.full_name or user.username, "link": link, "expires_minutes": minutes},
        user_id=user.id,
    )
    await session.commit()
    await outbox.dispatch(jobs=jobs, email_ids=[email.id])


async def verify_email(*, session: AsyncSession, cache: Cache, token: str) -> None:
    user_id = await _spend(session, token, TokenPurpose.VERIFY_EMAIL)
    await session.execute(update(User).where(User.id == user_id).values(is_verified=True))
    await session.commit()
    live = await session.execute(
        select(AuthSession.id).where(
            AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
        )
    )
    # Cached snapshots still say "unverified" for up to a minute; make them reload now.
    await principals.forget(cache=cache, session_ids=live.scalars().all())


async def request_password_reset(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    jobs: Jobs,
    address: str,
) -> None:
    """Runs after the 202 has gone out (a background task), so the answer looks and takes
    the same whether or not the address has an account."""
    try:
        async with sessionmaker() as session:
            user = (
                await session.execute(select(User).where(User.email == address.lower()))
            ).scalar_one_or_none()
            if user is None or not user.is_active:
                return
            minutes = settings.password_reset_token_expire_minutes
            link = await _issue(session, settings, user, TokenPurpose.RESET_PASSWORD, minutes)
            email = outbox.queue(
                session=session,
                settings=settings,
                recipient=user.email,
                subject=f"Reset your {settings.app_name} password",
                template="reset",
                context={
                    "name": user.full_name or user.username,
                    "link": link,
                    "expires_minutes": minutes,
                },
                user_id=user.id,
            )
            await session.commit()
        await outbox.dispatch(jobs=jobs, email_ids=[email.id])
    except Exception:
        logger.exception("password reset request failed")


async def reset_password(
    *,
    session: AsyncSession,
    cache: Cache,
    hub: Hub,
    settings: Settings,
    hasher: PasswordHasher,
    throttle: LoginThrottle,
    token: str,
    new_password: str,
) -> None:
    """Set the password and end every session of the user, in one transaction. The link
    reached the owner's mailbox, so the account's failed logins are forgiven: this is how the
    owner gets past a global failure budget a stranger has spent."""
    new_hash = await hasher.hash(new_password)  # before the token is spent: it may be slow
    user_id = await _spend(session, token, TokenPurpose.RESET_PASSWORD)
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        await session.rollback()
        raise InvalidActionToken()
    user.hashed_password = new_hash
    user.is_verified = True  # the link reached the address: it is the user's
    revoked = await auth_service.revoke_all_sessions(
        session=session, user_id=user_id, reason="password_reset"
    )
    await auth_service.commit_and_publish_revocations(
        session=session,
        cache=cache,
        hub=hub,
        settings=settings,
        user_id=user_id,
        session_ids=revoked,
        reason=EndReason.PASSWORD_RESET,
    )
    await throttle.reset(account_key(user_id=user_id, login=user.email))
