from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from app.articles.models import SLUG_MAX_CHARS, ArticleStatus
from app.core.schemas import APIModel, CleanStr, InputModel

Title = Annotated[CleanStr, StringConstraints(min_length=1, max_length=200)]
Body = Annotated[CleanStr, StringConstraints(max_length=100_000)]
SLUG_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
Slug = Annotated[
    str, StringConstraints(min_length=1, max_length=SLUG_MAX_CHARS, pattern=SLUG_PATTERN)
]


class ArticleCreate(InputModel):
    title: Title
    body: Body = ""
    status: ArticleStatus = ArticleStatus.DRAFT
    slug: Slug | None = Field(
        default=None,
        description=(
            "Left out: made from the title, with -2, -3, ... if taken. Given: 409 if taken."
        ),
    )


class ArticleUpdate(InputModel):
    """Fields left out keep their value; the slug stays when the title changes (links keep
    working) unless a new one is given."""

    title: Title = Field(default=None)  # type: ignore[assignment]
    body: Body = Field(default=None)  # type: ignore[assignment]
    status: ArticleStatus = Field(default=None)  # type: ignore[assignment]
    slug: Slug = Field(default=None)  # type: ignore[assignment]


class ArticleRead(APIModel):
    id: int
    slug: str
    title: str
    body: str
    status: ArticleStatus
    published_at: datetime | None
    author_id: int | None
    created_at: datetime
    updated_at: datetime
