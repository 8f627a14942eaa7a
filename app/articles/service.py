"""Articles: drafts their writers see, published ones everyone sees, unique slugs.

Slugs: made from the title (ASCII letters and digits joined by hyphens; a title with none
gives "article"); a generated slug that is taken gets the first free suffix -2, -3, ..., while
a slug the writer chose answers 409 when taken. The unique index settles concurrent writers:
a generated slug that loses the race is chosen again, a few times, before answering 409.
"""

import re
import unicodedata
from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, false, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.articles.errors import ArticleNotFound, SlugTaken
from app.articles.models import SLUG_MAX_CHARS, Article, ArticleStatus
from app.articles.schemas import ArticleCreate, ArticleUpdate
from app.auth.permissions import Permission, has_permission
from app.auth.principal import Principal
from app.core.db import utcnow
from app.core.pagination import paginate

_SLUG_ATTEMPTS = 3
# Room for a "-NNNN" suffix within the column.
_SLUG_BASE_CHARS = SLUG_MAX_CHARS - 8


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


def _publish_state(article: Article, status: ArticleStatus) -> None:
    article.status = status
    if status is ArticleStatus.PUBLISHED and article.published_at is None:
        article.published_at = utcnow()


async def create(*, session: AsyncSession, data: ArticleCreate, author: Principal) -> Article:
    base = slugify(data.title)
    for _ in range(_SLUG_ATTEMPTS):
        slug = data.slug or await _free_slug(session, base)
        article = Article(slug=slug, title=data.title, body=data.body, author_id=author.id)
        _publish_state(article, data.status)
        session.add(article)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            if data.slug is not None:
                raise SlugTaken(data.slug) from None
            continue
        return article
    raise SlugTaken(base)


async def get(*, session: AsyncSession, article_id: int, viewer: Principal | None) -> Article:
    """404 for a draft the viewer may not see: its existence is not public either."""
    article = await session.get(Article, article_id)
    if article is None or not (article.status is ArticleStatus.PUBLISHED or may_see_drafts(viewer)):
        raise ArticleNotFound(article_id)
    return article


async def get_by_slug(*, session: AsyncSession, slug: str, viewer: Principal | None) -> Article:
    article = await session.scalar(select(Article).where(Article.slug == slug, visible_to(viewer)))
    if article is None:
        raise ArticleNotFound(slug)
    return article


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
    statement = select(Article).where(condition)
    if wanted is ArticleStatus.PUBLISHED:
        statement = statement.order_by(Article.published_at.desc(), Article.id.desc())
    else:
        statement = statement.order_by(Article.updated_at.desc(), Article.id.desc())
    return await paginate(session, statement, page=page, per_page=per_page)


async def update(*, session: AsyncSession, article: Article, data: ArticleUpdate) -> Article:
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    if "title" in changes:
        article.title = changes["title"]
    if "body" in changes:
        article.body = changes["body"]
    if "status" in changes:
        _publish_state(article, changes["status"])
    if "slug" in changes:
        article.slug = changes["slug"]
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise SlugTaken(changes["slug"]) from None
    return article


async def remove(*, session: AsyncSession, article: Article) -> None:
    await session.execute(delete(Article).where(Article.id == article.id))
    await session.commit()
