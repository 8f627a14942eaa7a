"""Posts and comments: every read that lists posts carries their comment counts from one
statement (a correlated count per row of the page, served by ix_comments_post_id_id), with
the author eager-loaded in the same statement, so a page costs one query whatever its size.

Data access goes through `app.core.repository` (one unit of work per change): its statements
are the base the reads here extend with the count and the author."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from app.auth.principal import Principal
from app.core.config import Settings
from app.core.pagination import after_cursor, cursor_page
from app.core.repository import Repository, unit_of_work
from app.posts.errors import CommentNotFound, PostNotFound, TextTooLong
from app.posts.models import Comment, Post
from app.posts.schemas import (
    CommentCreate,
    CommentRead,
    CommentUpdate,
    PostCreate,
    PostRead,
    PostUpdate,
)

# Both are paged by keyset on the id (newest first), never by a client-chosen column.
posts = Repository(Post, order_columns={"id": Post.id})
comments = Repository(Comment, order_columns={"id": Comment.id})


def _comment_count() -> Any:
    return (
        select(func.count(Comment.id))
        .where(Comment.post_id == Post.id)
        .correlate(Post)
        .scalar_subquery()
        .label("comment_count")
    )


def _posts(*where: ColumnElement[bool]) -> Select[Any]:
    return posts.select(*where).add_columns(_comment_count()).options(joinedload(Post.author))


def _post_read(post: Post, comment_count: int) -> PostRead:
    return PostRead(
        id=post.id,
        title=post.title,
        body=post.body,
        author_id=post.author_id,
        author_username=post.author.username,
        comment_count=comment_count,
        created_at=post.created_at,
        updated_at=post.updated_at,
    )


def _comment_read(comment: Comment) -> CommentRead:
    return CommentRead(
        id=comment.id,
        post_id=comment.post_id,
        body=comment.body,
        author_id=comment.author_id,
        author_username=comment.author.username,
        created_at=comment.created_at,
        updated_at=comment.updated_at,
    )


def _check_post_bounds(settings: Settings, *, title: str | None, body: str | None) -> None:
    if title is not None and len(title) > settings.post_title_max_chars:
        raise TextTooLong("title", settings.post_title_max_chars)
    if body is not None and len(body) > settings.post_body_max_chars:
        raise TextTooLong("body", settings.post_body_max_chars)


def _check_comment_bounds(settings: Settings, body: str) -> None:
    if len(body) > settings.comment_body_max_chars:
        raise TextTooLong("body", settings.comment_body_max_chars)


# -- posts ------------------------------------------------------------------------------------


async def read_post(*, session: AsyncSession, post_id: int) -> PostRead:
    row = (await session.execute(_posts(Post.id == post_id))).one_or_none()
    if row is None:
        raise PostNotFound(post_id)
    post, comment_count = row
    return _post_read(post, comment_count)


async def list_posts(
    *, session: AsyncSession, author_id: int | None, limit: int, cursor: str | None
) -> tuple[list[PostRead], str | None]:
    """Newest first, by keyset cursor; one statement per page."""
    where = [] if author_id is None else [Post.author_id == author_id]
    statement = after_cursor(_posts(*where), Post.id, cursor=cursor, limit=limit)
    rows = (await session.execute(statement)).all()
    page, next_cursor = cursor_page(rows, limit=limit, key=lambda row: row[0].id)
    return [_post_read(post, count) for post, count in page], next_cursor


async def load_post(*, session: AsyncSession, post_id: int) -> Post:
    post = await posts.get(session, post_id)
    if post is None:
        raise PostNotFound(post_id)
    return post


async def create_post(
    *, session: AsyncSession, settings: Settings, data: PostCreate, author: Principal
) -> PostRead:
    _check_post_bounds(settings, title=data.title, body=data.body)
    # Read inside the writing transaction, then commit: the answer is exactly what this
    # transaction wrote (with the comment count as of that moment), in one round of locks.
    async with unit_of_work(session):
        post = await posts.create(session, title=data.title, body=data.body, author_id=author.id)
        return await read_post(session=session, post_id=post.id)


async def update_post(
    *, session: AsyncSession, settings: Settings, post: Post, data: PostUpdate
) -> PostRead:
    changes = data.model_dump(exclude_unset=True)
    _check_post_bounds(settings, title=changes.get("title"), body=changes.get("body"))
    async with unit_of_work(session):  # as create_post: read in the writing transaction
        await posts.update(session, post, changes)
        return await read_post(session=session, post_id=post.id)


async def delete_post(*, session: AsyncSession, post: Post) -> None:
    """Its comments go with it (ON DELETE CASCADE)."""
    async with unit_of_work(session):
        await posts.delete(session, post)


# -- comments ---------------------------------------------------------------------------------


def _comments(post_id: int) -> Select[Any]:
    return comments.select(Comment.post_id == post_id).options(joinedload(Comment.author))


async def _read_comment(*, session: AsyncSession, post_id: int, comment_id: int) -> CommentRead:
    statement = _comments(post_id).where(Comment.id == comment_id)
    comment = (await session.execute(statement)).scalar_one_or_none()
    if comment is None:
        raise CommentNotFound(post_id, comment_id)
    return _comment_read(comment)


async def list_comments(
    *, session: AsyncSession, post_id: int, limit: int, cursor: str | None
) -> tuple[list[CommentRead], str | None]:
    """A post's comments newest first, by keyset cursor (404 for a post that doesn't exist,
    rather than an empty page that looks like a post without comments)."""
    await load_post(session=session, post_id=post_id)
    statement = after_cursor(_comments(post_id), Comment.id, cursor=cursor, limit=limit)
    rows: Sequence[Comment] = (await session.execute(statement)).scalars().all()
    page, next_cursor = cursor_page(rows, limit=limit, key=lambda comment: comment.id)
    return [_comment_read(comment) for comment in page], next_cursor


async def load_comment(*, session: AsyncSession, post_id: int, comment_id: int) -> Comment:
    comment = await comments.get(session, comment_id)
    if comment is None or comment.post_id != post_id:
        raise CommentNotFound(post_id, comment_id)
    return comment


async def create_comment(
    *,
    session: AsyncSession,
    settings: Settings,
    post_id: int,
    data: CommentCreate,
    author: Principal,
) -> CommentRead:
    _check_comment_bounds(settings, data.body)
    await load_post(session=session, post_id=post_id)
    try:
        async with unit_of_work(session):  # as create_post: read in the writing transaction
            comment = await comments.create(
                session, post_id=post_id, author_id=author.id, body=data.body
            )
            return await _read_comment(session=session, post_id=post_id, comment_id=comment.id)
    except IntegrityError as exc:  # the post was deleted since load_post (rolled back)
        raise PostNotFound(post_id) from exc


async def update_comment(
    *, session: AsyncSession, settings: Settings, comment: Comment, data: CommentUpdate
) -> CommentRead:
    _check_comment_bounds(settings, data.body)
    async with unit_of_work(session):
        await comments.update(session, comment, {"body": data.body})
        return await _read_comment(session=session, post_id=comment.post_id, comment_id=comment.id)


async def delete_comment(*, session: AsyncSession, comment: Comment) -> None:
    async with unit_of_work(session):
        await comments.delete(session, comment)
