from typing import Annotated

from pydantic import ConfigDict, StringConstraints

from app.auth.models import Role
from app.core.schemas import CleanStr, InputModel


class UserSelfUpdate(InputModel):
    full_name: Annotated[CleanStr, StringConstraints(max_length=100)] | None = None
    bio: Annotated[CleanStr, StringConstraints(max_length=2000)] | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"full_name": "Hanako Yamada", "bio": "Keeps bees."}]}
    )


class UserAdminUpdate(InputModel):
    role: Role | None = None
    is_active: bool | None = None
