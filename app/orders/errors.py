from app.core.errors import AppError, Conflict, ErrorDetail, Forbidden, NotFound
from app.orders.models import OrderStatus


class OrderNotFound(NotFound):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"Order {order_id} not found")


class NotOrderOwner(Forbidden):
    def __init__(self) -> None:
        super().__init__("Only the owner or an admin may see or change this order")


class OrderTooLarge(AppError):
    """Over a limit a setting lowered below the schema's cap: reported like a schema error."""

    status, code = 422, "validation_error"

    def __init__(self, field: str, limit: int) -> None:
        detail = ErrorDetail(field=field, message=f"at most {limit}", type="too_large")
        super().__init__(f"Invalid request: {field} is over {limit}", details=[detail])


class IdempotencyKeyReused(Conflict):
    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used for an order with another body")


class StatusChangeRefused(Conflict):
    def __init__(self, current: OrderStatus, wanted: OrderStatus) -> None:
        super().__init__(f"An order can't go from {current} to {wanted}")


class StatusNotYours(Forbidden):
    def __init__(self, wanted: OrderStatus) -> None:
        super().__init__(f"Only an admin may mark an order {wanted}")


class StaleVersion(AppError):
    status, code = 412, "precondition_failed"

    def __init__(self) -> None:
        super().__init__("The order changed since you read it: read it again (If-Match)")


class VersionRequired(AppError):
    status, code = 428, "precondition_required"

    def __init__(self) -> None:
        super().__init__("Send If-Match with the order's ETag to change it")
