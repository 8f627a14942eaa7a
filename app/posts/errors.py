from app.core.errors import AppError, ErrorDetail, Forbidden, NotFound


class PostNotFound(NotFound):
    def __init__(self, post_id: int) -> None:
        super().__init__(f"Post {post_id} not found")


class CommentNotFound(NotFound):
    def __init__(self, post_id: int, comment_id: int) -> None:
        super().__init__(f"Comment {comment_id} not found on post {post_id}")


class NotTheAuthor(Forbidden):
    def __init__(self, what: str) -> None:
        super().__init__(f"Only the author or a moderator may change this {what}")


class TextTooLong(AppError):
    """Longer than the configured bound (narrower than the schema's cap): a 422 like
    the schema's own, naming the field."""

    status, code = 422, "validation_error"

    def __init__(self, field: str, limit: int) -> None:
        message = f"at most {limit} characters"
        detail = ErrorDetail(field=f"body.{field}", message=message, type="string_too_long")
        super().__init__(f"Invalid request: body.{field} has {message}", details=[detail])
