from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, SmallInteger, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, TimestampMixin, str_enum, utcnow

# -- identity: the account every principal, session and permission is about. It lives here,
# under every domain, because authentication reads it at each step; app.users manages
# accounts and profiles on top of it. (Table and migrations unchanged: only the module moved.)


class Role(StrEnum):
    USER = "user"
    EDITOR = "editor"  # writes articles (app.auth.permissions)
    ADMIN = "admin"
    SUPERUSER = "superuser"

    @property
    def is_admin(self) -> bool:
        return self in (Role.ADMIN, Role.SUPERUSER)


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    username: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    hashed_password: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str | None] = mapped_column(String(100))
    bio: Mapped[str | None] = mapped_column(Text)
    role: Mapped[Role] = mapped_column(str_enum(Role), default=Role.USER, index=True)
    is_active: Mapped[bool] = mapped_column(default=True, index=True)
    is_verified: Mapped[bool] = mapped_column(default=False)
    last_login_at: Mapped[datetime | None]
    age: Mapped[int | None] = mapped_column(SmallInteger)
    # `User.items`, `User.orders` and `User.posts` are declared from their domains' side
    # (backrefs): those stand above identity in the layers, and a relationship named here by
    # string would break every process that maps users without importing them.

    @property
    def is_admin(self) -> bool:
        return self.role.is_admin


# Usernames keep the case they were typed in, but two can't differ only by case.
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class AuthSession(Base):
    """One login: the family its rotated refresh tokens and access tokens belong to.

    Revoking it (logout, reuse detected, password changed) ends every token of the family,
    durably: access tokens carry its id as `sid` and are checked against it on each request.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    scopes: Mapped[str] = mapped_column(String(255))
    user_agent: Mapped[str | None] = mapped_column(String(255))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class TokenPurpose(StrEnum):
    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"


class ActionToken(Base):
    """A single-use, expiring token sent by email (AUTH-9), stored only as its SHA-256."""

    __tablename__ = "action_tokens"
    __table_args__ = (Index("ix_action_tokens_user_id_purpose", "user_id", "purpose"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntPK, ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[TokenPurpose] = mapped_column(str_enum(TokenPurpose))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]  # also set when a newer token of the purpose replaces it


class UserPermission(Base):
    """A permission granted to one user beyond their role's (app.auth.permissions)."""

    __tablename__ = "user_permissions"

    user_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    permission: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who granted it (audit); kept as a plain id so deleting the admin keeps the record.
    granted_by: Mapped[int | None] = mapped_column(BigIntPK)
