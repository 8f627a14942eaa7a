from app.core.errors import Conflict, Forbidden, NotFound


class RoomNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Room {name!r} not found")


class RoomForbidden(Forbidden):
    def __init__(self, name: str) -> None:
        super().__init__(f"Room {name!r} is for members only")


class NotRoomManager(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the room's creator or an admin may add members")


class RoomExists(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"Room {name!r} already exists")


class NotificationNotFound(NotFound):
    def __init__(self, notification_id: int) -> None:
        super().__init__(f"Notification {notification_id} not found")
