from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, TimestampMixin, str_enum


class Role(StrEnum):
    USER = "user"
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

    @property
    def is_admin(self) -> bool:
        return self.role.is_admin


# Usernames keep the case they were typed in, but two can't differ only by case.
Index("uq_users_username_lower", func.lower(User.username), unique=True)
