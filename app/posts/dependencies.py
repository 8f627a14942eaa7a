"""Who may write (and how often), and load-or-raise dependencies for the post or comment a
route changes: the author's own, or anyone's with `posts:moderate` (admins)."""

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Path, Request, Response

from app.auth.dependencies import VerifiedPrincipal
from app.auth.permissions import Permission, has_permission
from app.auth.principal import Principal
from app.core.db import MAX_ID
from app.core.dependencies import SessionDep, services_of
from app.core.limits import enforce
from app.core.ratelimit import Policy
from app.core.schemas import PrimaryKey
from app.posts import service
from app.posts.errors import NotTheAuthor
from app.posts.models import Comment, Post

Writer = VerifiedPrincipal
CommentId = Annotated[int, Path(ge=1, le=MAX_ID, description="Comment id")]


@lru_cache(maxsize=16)
def _policy(name: str, rate: str) -> Policy:
    # Settings are frozen and validated at start (a bad rate never gets here); one parse each.
    return Policy.parse(name, rate)


async def limit_post_writes(request: Request, response: Response, writer: Writer) -> None:
    settings = services_of(request).settings
    policy = _policy("post_write", settings.rate_limit_post_write)
    await enforce(request, response, policy, f"user:{writer.id}")


async def limit_comment_writes(request: Request, response: Response, writer: Writer) -> None:
    settings = services_of(request).settings
    policy = _policy("comment_write", settings.rate_limit_comment_write)
    await enforce(request, response, policy, f"user:{writer.id}")


def _may_change(writer: Principal, author_id: int) -> bool:
    return author_id == writer.id or has_permission(writer, Permission.POSTS_MODERATE)


async def editable_post(post_id: PrimaryKey, writer: Writer, session: SessionDep) -> Post:
    post = await service.load_post(session=session, post_id=post_id)
    if not _may_change(writer, post.author_id):
        raise NotTheAuthor("post")
    return post


async def editable_comment(
    post_id: PrimaryKey, comment_id: CommentId, writer: Writer, session: SessionDep
) -> Comment:
    comment = await service.load_comment(session=session, post_id=post_id, comment_id=comment_id)
    if not _may_change(writer, comment.author_id):
        raise NotTheAuthor("comment")
    return comment


PostWriteLimit = Depends(limit_post_writes)
CommentWriteLimit = Depends(limit_comment_writes)
EditablePost = Annotated[Post, Depends(editable_post)]
EditableComment = Annotated[Comment, Depends(editable_comment)]
