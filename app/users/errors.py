from app.core.errors import NotFound


class UserNotFound(NotFound):
    def __init__(self, user_id: int) -> None:
        super().__init__(f"User {user_id} not found")
