from typing import Annotated

from fastapi import APIRouter, Query, status

from app.core.dependencies import SessionDep, SettingsDep
from app.core.schemas import OptionalId, PrimaryKey
from app.posts import service
from app.posts.dependencies import (
    CommentWriteLimit,
    EditableComment,
    EditablePost,
    PostWriteLimit,
    Writer,
)
from app.posts.schemas import (
    CommentCreate,
    CommentCursorPage,
    CommentRead,
    CommentUpdate,
    PostCreate,
    PostCursorPage,
    PostRead,
    PostUpdate,
)

router = APIRouter(prefix="/posts", tags=["posts"])

Limit = Annotated[int, Query(ge=1, le=100, description="Rows per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="`next_cursor` of a page")]


@router.post(
    "/",
    response_model=PostRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[PostWriteLimit],
)
async def create_post(
    data: PostCreate, writer: Writer, session: SessionDep, settings: SettingsDep
) -> PostRead:
    """Publish a post as yourself."""
    return await service.create_post(session=session, settings=settings, data=data, author=writer)


@router.get("/", response_model=PostCursorPage)
async def list_posts(
    session: SessionDep, author_id: OptionalId = None, limit: Limit = 20, cursor: Cursor = None
) -> PostCursorPage:
    """Posts newest first, each with its comment count; public."""
    posts, next_cursor = await service.list_posts(
        session=session, author_id=author_id, limit=limit, cursor=cursor
    )
    return PostCursorPage(items=posts, next_cursor=next_cursor)


@router.get("/{post_id}", response_model=PostRead)
async def read_post(post_id: PrimaryKey, session: SessionDep) -> PostRead:
    """One post with its comment count; public."""
    return await service.read_post(session=session, post_id=post_id)


@router.patch("/{post_id}", response_model=PostRead, dependencies=[PostWriteLimit])
async def update_post(
    data: PostUpdate, post: EditablePost, session: SessionDep, settings: SettingsDep
) -> PostRead:
    """Edit a post (its author, or a moderator)."""
    return await service.update_post(session=session, settings=settings, post=post, data=data)


@router.delete("/{post_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[PostWriteLimit])
async def delete_post(post: EditablePost, session: SessionDep) -> None:
    """Delete a post and its comments (its author, or a moderator)."""
    await service.delete_post(session=session, post=post)


@router.post(
    "/{post_id}/comments/",
    response_model=CommentRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[CommentWriteLimit],
)
async def create_comment(
    post_id: PrimaryKey,
    data: CommentCreate,
    writer: Writer,
    session: SessionDep,
    settings: SettingsDep,
) -> CommentRead:
    """Comment on a post as yourself."""
    return await service.create_comment(
        session=session, settings=settings, post_id=post_id, data=data, author=writer
    )


@router.get("/{post_id}/comments/", response_model=CommentCursorPage)
async def list_comments(
    post_id: PrimaryKey, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> CommentCursorPage:
    """A post's comments, newest first, by cursor; public."""
    comments, next_cursor = await service.list_comments(
        session=session, post_id=post_id, limit=limit, cursor=cursor
    )
    return CommentCursorPage(items=comments, next_cursor=next_cursor)


@router.patch(
    "/{post_id}/comments/{comment_id}",
    response_model=CommentRead,
    dependencies=[CommentWriteLimit],
)
async def update_comment(
    data: CommentUpdate, comment: EditableComment, session: SessionDep, settings: SettingsDep
) -> CommentRead:
    """Edit a comment (its author, or a moderator)."""
    return await service.update_comment(
        session=session, settings=settings, comment=comment, data=data
    )


@router.delete(
    "/{post_id}/comments/{comment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[CommentWriteLimit],
)
async def delete_comment(comment: EditableComment, session: SessionDep) -> None:
    """Delete a comment (its author, or a moderator)."""
    await service.delete_comment(session=session, comment=comment)
