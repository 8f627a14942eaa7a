"""Scopes a token may carry, and the finer permissions each role has.

A principal's effective permissions are its role's plus the grants an admin gave that user
(`UserPermission` rows, managed at /api/v1/admin/users/{id}/permissions). Both are carried in
the principal's cached snapshot (app.auth.principal), so checking one costs no query.
"""

from collections.abc import Iterable
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
    Role.EDITOR: frozenset({Scope.PROFILE, Scope.ITEMS_WRITE}),
    Role.ADMIN: frozenset(Scope),
    Role.SUPERUSER: frozenset(Scope),
}


class Permission(StrEnum):
    MANAGE_ANY_ITEM = "items:manage_any"
    HARD_DELETE_ITEM = "items:hard_delete"
    MANAGE_USERS = "users:manage"
    HARD_DELETE_USER = "users:hard_delete"
    GRANT_PRIVILEGED_ROLES = "users:grant_privileged_roles"
    ARTICLES_WRITE = "articles:write"
    ARTICLES_DELETE = "articles:delete"
    POSTS_MODERATE = "posts:moderate"  # edit and delete anyone's posts and comments


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.USER: frozenset(),
    Role.EDITOR: frozenset({Permission.ARTICLES_WRITE}),
    Role.ADMIN: frozenset(
        {
            Permission.MANAGE_ANY_ITEM,
            Permission.HARD_DELETE_ITEM,
            Permission.MANAGE_USERS,
            Permission.ARTICLES_WRITE,
            Permission.ARTICLES_DELETE,
            Permission.POSTS_MODERATE,
        }
    ),
    Role.SUPERUSER: frozenset(Permission),
}


class HasPermissions(Protocol):
    @property
    def permissions(self) -> frozenset[str]: ...


# As plain strings, made once: every authenticated request asks (building them each time was
# 2.7 µs of it).
_KNOWN_PERMISSIONS = frozenset(str(p) for p in Permission)
_ROLE_PERMISSION_NAMES = {
    role: frozenset(str(p) for p in permissions) for role, permissions in ROLE_PERMISSIONS.items()
}


def effective_permissions(role: Role, grants: Iterable[str]) -> frozenset[str]:
    """The role's permissions plus the user's grants. A grant naming a permission this
    version doesn't know (left by a newer release, or removed since) is ignored."""
    granted = _ROLE_PERMISSION_NAMES[role]
    extra = _KNOWN_PERMISSIONS.intersection(grants)
    return granted | extra if extra else granted


def has_permission(actor: HasPermissions, permission: Permission) -> bool:
    return permission in actor.permissions


def missing_permissions(actor: HasPermissions, required: Iterable[Permission]) -> list[str]:
    return sorted({str(p) for p in required} - actor.permissions)


def grantable_scopes(role: Role, requested: set[str] | None) -> list[str]:
    """The scopes a new token gets: what was asked for, cut down to what the role allows."""
    allowed = ROLE_SCOPES[role]
    chosen = allowed if requested is None else {s for s in allowed if s in requested}
    return sorted(chosen)
