from app.core.errors import AppError


class URLNotAllowed(AppError):
    """A source URL refused before any request is made (scheme, shape, a literal address)."""

    status, code = 422, "url_not_allowed"
