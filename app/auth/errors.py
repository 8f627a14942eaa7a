from app.core.errors import AppError, Conflict, ErrorDetail, Forbidden, Unauthorized


class InvalidCredentials(AppError):
    status, code = 401, "invalid_credentials"

    def __init__(self, message: str = "Incorrect username or password", status: int = 401) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(message, headers=headers)
        self.status = status


class AlreadyRegistered(Conflict):
    def __init__(
        self,
        details: list[ErrorDetail] | None = None,
        message: str = "Username or email is already registered",
    ) -> None:
        super().__init__(message, details=details)


class AlreadyVerified(Conflict):
    def __init__(self) -> None:
        super().__init__("Your email address is already verified")


class AccountDisabled(Forbidden):
    def __init__(self) -> None:
        super().__init__("This account is disabled")


class EmailNotVerified(Forbidden):
    def __init__(self) -> None:
        super().__init__("Verify your email address first")


class AdminRequired(Forbidden):
    def __init__(self) -> None:
        super().__init__("Administrator role required")


class MissingScope(Forbidden):
    def __init__(self, scopes: list[str]) -> None:
        super().__init__(f"Missing scope: {' '.join(scopes)}")


class MissingPermission(Forbidden):
    """403 naming every missing permission, in the message and one detail each."""

    def __init__(self, permissions: str | list[str]) -> None:
        names = [permissions] if isinstance(permissions, str) else permissions
        super().__init__(
            f"Missing permission: {' '.join(names)}",
            details=[
                ErrorDetail(field=None, message=name, type="missing_permission") for name in names
            ],
        )
        self.permissions = names


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"

    def __init__(self, message: str = "Invalid or expired refresh token") -> None:
        super().__init__(message)
