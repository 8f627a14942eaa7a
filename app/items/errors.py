from app.core.errors import Forbidden, NotFound


class ItemNotFound(NotFound):
    def __init__(self, item_id: int) -> None:
        super().__init__(f"Item {item_id} not found")


class NotItemOwner(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the owner or an admin may change this item")
