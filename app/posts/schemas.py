from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from app.core.schemas import APIModel, CleanStr, CursorPage, InputModel
from app.posts.models import COMMENT_BODY_MAX_CHARS, POST_BODY_MAX_CHARS, TITLE_MAX_CHARS

Title = Annotated[CleanStr, StringConstraints(min_length=1, max_length=TITLE_MAX_CHARS)]
PostBody = Annotated[CleanStr, StringConstraints(min_length=1, max_length=POST_BODY_MAX_CHARS)]
CommentBody = Annotated[
    CleanStr, StringConstraints(min_length=1, max_length=COMMENT_BODY_MAX_CHARS)
]


class PostCreate(InputModel):
    title: Title
    body: PostBody

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"title": "Moving day", "body": "We moved the office to Osaka."}]
        }
    )


class PostUpdate(InputModel):
    """Fields left out keep their value; neither may be set to null."""

    title: Title = Field(default=None)  # type: ignore[assignment]
    body: PostBody = Field(default=None)  # type: ignore[assignment]


class PostRead(APIModel):
    id: int
    title: str
    body: str
    author_id: int
    author_username: str
    comment_count: int = Field(description="Comments on the post now")
    created_at: datetime
    updated_at: datetime


class PostCursorPage(CursorPage[PostRead]):
    pass


class CommentCreate(InputModel):
    body: CommentBody

    model_config = ConfigDict(json_schema_extra={"examples": [{"body": "Congratulations!"}]})


class CommentUpdate(InputModel):
    body: CommentBody


class CommentRead(APIModel):
    id: int
    post_id: int
    body: str
    author_id: int
    author_username: str
    created_at: datetime
    updated_at: datetime


class CommentCursorPage(CursorPage[CommentRead]):
    pass
