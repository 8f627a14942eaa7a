from app.core.errors import AppError, ErrorDetail, NotFound


class ItemNotFound(NotFound):
    def __init__(self, item_id: int) -> None:
        super().__init__(f"Item {item_id} not found")


class InvalidCursor(AppError):
    status, code = 422, "validation_error"

    def __init__(self) -> None:
        detail = ErrorDetail(field="query.cursor", message="not a cursor we issued", type="cursor")
        super().__init__("Invalid request: query.cursor is not valid", details=[detail])
