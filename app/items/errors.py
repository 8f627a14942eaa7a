from app.core.errors import Forbidden, NotFound


class ItemNotFound(NotFound):
    def __init__(self, item_id: int) -> None:
        super().__init__(f"Item {item_id} not found")


class NotItemOwner(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the owner or an admin may change this item")


class NotItemsOwner(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the user or an admin may list a user's items")
