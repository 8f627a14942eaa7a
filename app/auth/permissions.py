"""Scopes a token may carry, and the finer permissions each role has."""

from enum import StrEnum
from typing import Protocol

from app.auth.models import Role


class Scope(StrEnum):
    PROFILE = "profile"
    ITEMS_WRITE = "items:write"
    ADMIN = "admin"


SCOPE_DESCRIPTIONS = {
    Scope.PROFILE: "Read and change your own profile and sessions.",
    Scope.ITEMS_WRITE: "Create, change and delete your items.",
    Scope.ADMIN: "Administer users and every item (admins only).",
}

ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.USER: frozenset({Scope.PROFILE, Scope.ITEMS_WRITE}),
    Role.ADMIN: frozenset(Scope),
    Role.SUPERUSER: frozenset(Scope),
}


class Permission(StrEnum):
    MANAGE_ANY_ITEM = "items:manage_any"
    HARD_DELETE_ITEM = "items:hard_delete"
    MANAGE_USERS = "users:manage"
    HARD_DELETE_USER = "users:hard_delete"
    GRANT_PRIVILEGED_ROLES = "users:grant_privileged_roles"
    POSTS_MODERATE = "posts:moderate"  # edit and delete anyone's posts and comments


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.USER: frozenset(),
    Role.ADMIN: frozenset(
        {
            Permission.MANAGE_ANY_ITEM,
            Permission.HARD_DELETE_ITEM,
            Permission.MANAGE_USERS,
            Permission.POSTS_MODERATE,
        }
    ),
    Role.SUPERUSER: frozenset(Permission),
}


class HasRole(Protocol):
    @property
    def role(self) -> Role: ...


def has_permission(actor: HasRole, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[actor.role]


def grantable_scopes(role: Role, requested: set[str] | None) -> list[str]:
    """The scopes a new token gets: what was asked for, cut down to what the role allows."""
    allowed = ROLE_SCOPES[role]
    chosen = allowed if requested is None else {s for s in allowed if s in requested}
    return sorted(chosen)
