from app.core.errors import AppError, Unauthorized


class InvalidCredentials(AppError):
    status, code = 401, "invalid_credentials"

    def __init__(self, message: str = "Incorrect username or password", status: int = 401) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(message, headers=headers)
        self.status = status


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"

    def __init__(self, message: str = "Invalid or expired refresh token") -> None:
        super().__init__(message)
