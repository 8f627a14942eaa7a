"""Articles: drafts their writers see, published ones everyone sees, unique slugs.

Slugs: made from the title (ASCII letters and digits joined by hyphens; a title with none
gives "article"); a generated slug that is taken gets the first free suffix -2, -3, ..., while
a slug the writer chose answers 409 when taken. The unique index settles concurrent writers:
a generated slug that loses the race is chosen again, a few times, before answering 409.

Data access goes through `app.core.repository` (one unit of work per change); what is
special here is the slug, the publish state and who sees drafts.
"""

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.articles.errors import ArticleNotFound, SlugTaken
from app.articles.models import SLUG_MAX_CHARS, Article, ArticleStatus
from app.articles.schemas import ArticleCreate, ArticleUpdate
from app.auth.permissions import Permission, has_permission
from app.auth.principal import Principal
from app.core.db import utcnow
from app.core.repository import Repository, unit_of_work

_SLUG_ATTEMPTS = 3
# Room for a "-NNNN" suffix within the column.
_SLUG_BASE_CHARS = SLUG_MAX_CHARS - 8

articles = Repository(
    Article,
    order_columns={
        "id": Article.id,
        "published_at": Article.published_at,
        "updated_at": Article.updated_at,
    },
)


def slugify(title: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > _SLUG_BASE_CHARS:
            break
        slug = candidate
    return slug or (words[0][:_SLUG_BASE_CHARS] if words else "article")


def may_see_drafts(viewer: Principal | None) -> bool:
    return viewer is not None and has_permission(viewer, Permission.ARTICLES_WRITE)


def visible_to(viewer: Principal | None) -> ColumnElement[bool]:
    """Published articles for everyone; drafts too for writers (search uses it as well)."""
    if may_see_drafts(viewer):
        return true()
    return Article.status == ArticleStatus.PUBLISHED


async def _free_slug(session: AsyncSession, base: str) -> str:
    taken = set(
        (
            await session.scalars(
                select(Article.slug).where(
                    or_(Article.slug == base, Article.slug.like(f"{base}-%"))
                )
            )
        ).all()
    )
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _publish_values(status: ArticleStatus, published_at: datetime | None) -> dict[str, Any]:
    """The status, and `published_at` stamped the first time it is published (kept after)."""
    if status is ArticleStatus.PUBLISHED and published_at is None:
        published_at = utcnow()
    return {"status": status, "published_at": published_at}


async def create(*, session: AsyncSession, data: ArticleCreate, author: Principal) -> Article:
    base = slugify(data.title)
    for _ in range(_SLUG_ATTEMPTS):
        slug = data.slug or await _free_slug(session, base)
        try:
            async with unit_of_work(session):
                article = await articles.create(
                    session,
                    slug=slug,
                    title=data.title,
                    body=data.body,
                    author_id=author.id,
                    **_publish_values(data.status, None),
                )
        except IntegrityError:  # the slug was taken meanwhile (the unit rolled back)
            if data.slug is not None:
                raise SlugTaken(data.slug) from None
            continue
        return article
    raise SlugTaken(base)


async def get(*, session: AsyncSession, article_id: int, viewer: Principal | None) -> Article:
    """404 for a draft the viewer may not see: its existence is not public either."""
    article = await articles.get(session, article_id)
    if article is None or not (article.status is ArticleStatus.PUBLISHED or may_see_drafts(viewer)):
        raise ArticleNotFound(article_id)
    return article


async def get_by_slug(*, session: AsyncSession, slug: str, viewer: Principal | None) -> Article:
    found = await articles.list(session, where=[Article.slug == slug, visible_to(viewer)], limit=1)
    if not found:
        raise ArticleNotFound(slug)
    return found[0]


async def list_page(
    *,
    session: AsyncSession,
    viewer: Principal | None,
    status: ArticleStatus | None,
    page: int,
    per_page: int,
) -> tuple[Sequence[Article], int]:
    """Published ones (newest first) unless a writer asks for drafts."""
    wanted = status or ArticleStatus.PUBLISHED
    if wanted is ArticleStatus.DRAFT and not may_see_drafts(viewer):
        condition: ColumnElement[bool] = false()
    else:
        condition = Article.status == wanted
    total = await articles.count(session, where=[condition])
    offset = (page - 1) * per_page
    if total <= offset:
        return [], total
    order_by = "-published_at" if wanted is ArticleStatus.PUBLISHED else "-updated_at"
    rows = await articles.list(
        session, where=[condition], order_by=order_by, limit=per_page, offset=offset
    )
    return rows, total


async def update(*, session: AsyncSession, article: Article, data: ArticleUpdate) -> Article:
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if "status" in changes:
        changes.update(_publish_values(changes["status"], article.published_at))
    try:
        async with unit_of_work(session):
            await articles.update(session, article, changes)
    except IntegrityError:  # only the slug is unique
        raise SlugTaken(changes["slug"]) from None
    return article


async def remove(*, session: AsyncSession, article: Article) -> None:
    async with unit_of_work(session):
        await articles.delete(session, article)
