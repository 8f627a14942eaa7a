from datetime import datetime
from typing import Annotated

from pydantic import StringConstraints

from app.core.schemas import APIModel, CleanStr, InputModel
from app.users.models import Role


class UserPublic(APIModel):
    """What anyone signed in may see of another user."""

    id: int
    username: str
    full_name: str | None
    bio: str | None
    created_at: datetime


class UserPrivate(UserPublic):
    """What the user and admins see."""

    email: str
    role: Role
    is_active: bool
    is_verified: bool
    updated_at: datetime
    last_login_at: datetime | None


class UserSelfUpdate(InputModel):
    full_name: Annotated[CleanStr, StringConstraints(max_length=100)] | None = None
    bio: Annotated[CleanStr, StringConstraints(max_length=2000)] | None = None


class UserAdminUpdate(InputModel):
    role: Role | None = None
    is_active: bool | None = None
