"""Password hashing off the event loop, and access-token JWTs with every claim checked."""

import hashlib
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import Settings
from app.core.errors import ServiceUnavailable

JWT_ALGORITHM = "HS256"  # pinned: the decoder accepts this and nothing else
ACCESS_TOKEN_TYPE = "access"
REQUIRED_CLAIMS = ["sub", "jti", "type", "scopes", "iat", "exp", "iss", "aud", "sid"]


T = TypeVar("T")


class HasherBusy(ServiceUnavailable):
    """More password hashes are waiting than the process takes: refused at once, before any
    work, so a login flood cannot grow a queue that every honest login then waits through."""

    def __init__(self) -> None:
        super().__init__(
            "Too many sign-ins at once; try again in a moment.", headers={"Retry-After": "1"}
        )


class PasswordHasher:
    """Argon2id for new hashes; bcrypt hashes still verify and report that they need upgrading.

    Hashing runs in worker threads (argon2 and bcrypt release the GIL) behind a limiter, so a
    burst of logins queues up instead of taking every core from the event loop.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> "PasswordHasher":
        return cls(
            settings.password_hash_concurrency,
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            max_waiting=settings.password_hash_concurrency
            * settings.password_hash_max_waiting_per_thread,
        )

    def __init__(
        self,
        concurrency: int,
        *,
        memory_kib: int = 19_456,
        time_cost: int = 2,
        max_waiting: int = 8,
    ) -> None:
        argon2 = Argon2Hasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=1)
        self._hash = PasswordHash((argon2, BcryptHasher()))
        self._limiter = anyio.CapacityLimiter(concurrency)
        # Admitted = hashing now + waiting for a thread. The check and the count happen with no
        # await between them, so on one event loop they are exact without a lock.
        self._max_admitted = concurrency + max_waiting
        self._admitted = 0
        # Verified against when the account does not exist, so both paths cost the same.
        self._dummy_hash = self._hash.hash(secrets.token_urlsafe(16))

    async def _run(self, function: Callable[[], T]) -> T:
        if self._admitted >= self._max_admitted:
            raise HasherBusy()
        self._admitted += 1
        try:
            return await anyio.to_thread.run_sync(function, limiter=self._limiter)
        finally:
            self._admitted -= 1

    async def hash(self, password: str) -> str:
        return await self._run(partial(self._hash.hash, password))

    async def verify_and_update(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """(valid, new hash if the stored one is outdated). `hashed=None` burns the same time."""
        target = hashed if hashed is not None else self._dummy_hash
        valid, updated = await self._run(partial(self._hash.verify_and_update, password, target))
        return (valid and hashed is not None), updated


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: str
    token_id: str
    scopes: frozenset[str]
    issued_at: datetime
    expires_at: datetime


class InvalidToken(Exception):
    """The token is not one we issued, or no longer valid; the message is safe to show."""


def create_access_token(
    settings: Settings, *, user_id: int, session_id: str, scopes: list[str]
) -> tuple[str, int]:
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "sid": session_id,
        "jti": uuid.uuid4().hex,
        "type": ACCESS_TOKEN_TYPE,
        "scopes": scopes,
        "iat": now,
        "exp": now + lifetime,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    token = jwt.encode(claims, settings.signing_key(), algorithm=JWT_ALGORITHM)
    return token, int(lifetime.total_seconds())


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            settings.signing_key(),
            algorithms=[JWT_ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("Token has expired") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("Invalid token") from exc
    scopes = claims["scopes"]
    if claims["type"] != ACCESS_TOKEN_TYPE:
        raise InvalidToken("Invalid token type")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidToken("Invalid token")
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError) as exc:
        raise InvalidToken("Invalid token") from exc
    return AccessClaims(
        user_id=user_id,
        session_id=str(claims["sid"]),
        token_id=str(claims["jti"]),
        scopes=frozenset(scopes),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def hash_opaque_token(token: str) -> str:
    """Refresh tokens are stored only as SHA-256: high-entropy, so no slow hash is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


class AccessTokenVerifier:
    """Decodes access tokens, remembering the ones already verified.

    A token's signature and claims can't change, so a token seen before needs only its expiry
    checked again: this saves the HMAC and JSON work on every request after a client's first.
    Bounded, so a flood of distinct tokens can't grow it without end.
    """

    def __init__(self, settings: Settings, *, max_entries: int = 10_000) -> None:
        self._settings = settings
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()
        self._max_entries = max_entries

    def decode(self, token: str) -> AccessClaims:
        claims = self._verified.get(token)
        if claims is None:
            claims = decode_access_token(self._settings, token)
            self._verified[token] = claims
            if len(self._verified) > self._max_entries:
                self._verified.popitem(last=False)
        if claims.expires_at <= datetime.now(UTC):
            self._verified.pop(token, None)
            raise InvalidToken("Token has expired")
        return claims
