from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, StringConstraints

from app.auth.models import Role
from app.auth.permissions import Permission
from app.auth.schemas import Age
from app.core.schemas import APIModel, CleanStr, InputModel


class UserSelfUpdate(InputModel):
    full_name: Annotated[CleanStr, StringConstraints(max_length=100)] | None = None
    bio: Annotated[CleanStr, StringConstraints(max_length=2000)] | None = None
    age: Age | None = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"full_name": "Hanako Yamada", "bio": "Keeps bees."}]}
    )


class UserAdminUpdate(InputModel):
    role: Role | None = None
    is_active: bool | None = None


class PermissionGrant(InputModel):
    permission: Permission


class PermissionGrantRead(APIModel):
    permission: str
    granted_at: datetime
    granted_by: int | None


class UserPermissionsRead(APIModel):
    """A user's permissions: the role's, the grants (with who granted them and when), and
    the effective set the API checks (role's plus grants)."""

    user_id: int
    role: Role
    role_permissions: list[str]
    grants: list[PermissionGrantRead]
    effective: list[str]
