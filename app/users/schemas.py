from typing import Annotated

from pydantic import StringConstraints

from app.auth.models import Role
from app.auth.schemas import Age
from app.core.schemas import CleanStr, InputModel


class UserSelfUpdate(InputModel):
    full_name: Annotated[CleanStr, StringConstraints(max_length=100)] | None = None
    bio: Annotated[CleanStr, StringConstraints(max_length=2000)] | None = None
    age: Age | None = None


class UserAdminUpdate(InputModel):
    role: Role | None = None
    is_active: bool | None = None
