import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    computed_field,
    field_validator,
)

from app.auth.models import Role
from app.core.schemas import APIModel, CleanStr, Email, InputModel, any_case

RESERVED_USERNAMES = frozenset(
    {
        "admin", "administrator", "root", "system", "superuser", "support", "staff",
        "moderator", "api", "me", "null", "none", "undefined", "anonymous", "help", "www",
    }
)  # fmt: skip


USERNAME_CHARS = r"[A-Za-z0-9_-]+"
UPPER_CASE = r"[A-Z]"
DIGIT = r"\d"


# The validators below say which rule failed; these patterns are the same rules for the OpenAPI
# document (pydantic's Rust regex engine has no look-ahead, so they can't be the validators).
_RESERVED = "|".join(any_case(name) for name in sorted(RESERVED_USERNAMES))
USERNAME_SCHEMA_PATTERN = f"^(?!(?:{_RESERVED})$){USERNAME_CHARS}$"
PASSWORD_SCHEMA_PATTERN = f"^(?=[\\s\\S]*{UPPER_CASE})(?=[\\s\\S]*{DIGIT})"


def _not_reserved(username: str) -> str:
    if username.lower() in RESERVED_USERNAMES:
        raise ValueError("this username is reserved")
    return username


def _strong_password(password: str) -> str:
    if not re.search(UPPER_CASE, password):
        raise ValueError("password needs at least one upper-case letter")
    if not re.search(DIGIT, password):
        raise ValueError("password needs at least one digit")
    return password


UsernameChars = Annotated[
    str, StringConstraints(min_length=3, max_length=32, pattern=f"^{USERNAME_CHARS}$")
]
Username = Annotated[
    UsernameChars,
    AfterValidator(_not_reserved),
    Field(json_schema_extra={"pattern": USERNAME_SCHEMA_PATTERN}),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=128),
    AfterValidator(_strong_password),
    Field(json_schema_extra={"pattern": PASSWORD_SCHEMA_PATTERN}),
]
# Only checked for length: a stored password may predate today's rules.
AnyPassword = Annotated[str, StringConstraints(min_length=1, max_length=128)]
FullName = Annotated[CleanStr, StringConstraints(min_length=1, max_length=100)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Age = Annotated[int, Field(ge=1, le=150, description="Age in years")]


class RegisterRequest(InputModel):
    username: Username
    email: Email
    password: Password
    password_confirm: str = Field(max_length=128)
    full_name: FullName | None = None
    age: Age | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "hanako",
                    "email": "hanako@example.com",
                    "password": "Correct-horse-1",
                    "password_confirm": "Correct-horse-1",
                    "full_name": "Hanako Yamada",
                }
            ]
        }
    )

    @field_validator("password_confirm")
    @classmethod
    def _passwords_match(cls, value: str, info: ValidationInfo) -> str:
        if "password" in info.data and value != info.data["password"]:
            raise ValueError("passwords do not match")
        return value


class LoginForm(BaseModel):
    """The OAuth2 password form (RFC 6749 4.3); `username` may also be the email."""

    grant_type: Annotated[str | None, Field(pattern="^password$")] = None
    username: Annotated[CleanStr, StringConstraints(min_length=1, max_length=254)]
    password: AnyPassword
    scope: Annotated[CleanStr, StringConstraints(max_length=500)] = ""
    client_id: str | None = None
    client_secret: str | None = None

    def requested_scopes(self) -> set[str] | None:
        return set(self.scope.split()) or None


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
    scope: str = Field(description="Space-separated scopes granted to the access token")


class RefreshRequest(InputModel):
    refresh_token: OpaqueToken


class LogoutRequest(InputModel):
    refresh_token: OpaqueToken | None = None


class ChangePasswordRequest(InputModel):
    current_password: AnyPassword
    new_password: Password

    @field_validator("new_password")
    @classmethod
    def _differs_from_current(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("current_password"):
            raise ValueError("the new password must differ from the current one")
        return value


class _SuperuserFields(BaseModel):
    username: Annotated[
        str, StringConstraints(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    email: Email
    password: Password


SuperuserFields = TypeAdapter(_SuperuserFields)


class VerifyEmailRequest(InputModel):
    token: OpaqueToken


class PasswordResetRequest(InputModel):
    email: Email


class PasswordResetConfirm(InputModel):
    token: OpaqueToken
    new_password: Password


class Accepted(BaseModel):
    """A request taken; what follows happens by email."""

    detail: str


class RegistrationAccepted(Accepted):
    """A sign-up taken: the same answer whether or not the address already had an account."""


# The account as the API shows it (/auth/me, /users): identity's shapes, beside its model.
class UserPublic(APIModel):
    """What anyone signed in may see of another user."""

    id: int
    username: str
    full_name: str | None
    bio: str | None
    created_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "username": "hanako",
                    "full_name": "Hanako Yamada",
                    "bio": "Keeps bees in Kyoto.",
                    "created_at": "2026-04-01T09:30:00Z",
                }
            ]
        }
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def display_name(self) -> str:
        """The full name if set, else the username."""
        return self.full_name or self.username


class UserPrivate(UserPublic):
    """What the user and admins see (age is personal: not in the public view)."""

    email: str
    age: int | None
    role: Role
    is_active: bool
    is_verified: bool
    updated_at: datetime
    last_login_at: datetime | None
