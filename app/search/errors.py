from app.core.errors import AppError, ErrorDetail


class QueryTooLong(AppError):
    """Longer than SEARCH_QUERY_MAX_CHARS (which may be below the schema's ceiling)."""

    status, code = 422, "validation_error"

    def __init__(self, limit: int) -> None:
        message = f"String should have at most {limit} characters"
        super().__init__(
            f"The search query is longer than {limit} characters",
            details=[ErrorDetail(field="query.q", message=message, type="string_too_long")],
        )
