from app.core.errors import Conflict, NotFound


class ArticleNotFound(NotFound):
    def __init__(self, key: int | str) -> None:
        super().__init__(f"Article {key} not found")


class SlugTaken(Conflict):
    """Only a slug the writer chose clashes; a generated one takes a numeric suffix."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"Slug already in use: {slug}")
