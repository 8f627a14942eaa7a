from app.core.errors import Forbidden, NotFound


class UserNotFound(NotFound):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"User {user_id} not found")


class CannotDemoteSelf(Forbidden):
    """An admin locking themselves out by mistake; another admin can do it."""

    def __init__(self) -> None:
        super().__init__("You cannot change your own role or deactivate yourself")


class CannotDeleteSelf(Forbidden):
    def __init__(self) -> None:
        super().__init__("You cannot delete yourself")


class CannotGrantUnheld(Forbidden):
    """Admins hand out only what they hold: no one raises themselves or a colleague above
    their own permissions (a superuser holds them all)."""

    def __init__(self, permission: str) -> None:
        super().__init__(f"You cannot grant or revoke a permission you lack: {permission}")
