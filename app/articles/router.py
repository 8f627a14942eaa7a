from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from app.articles import service
from app.articles.models import ArticleStatus
from app.articles.schemas import SLUG_PATTERN, ArticleCreate, ArticleRead, ArticleUpdate
from app.auth.dependencies import OptionalPrincipal, RequirePermissions
from app.auth.permissions import Permission
from app.auth.principal import Principal
from app.core.dependencies import SessionDep
from app.core.schemas import Page, PageNumber, PerPage, PrimaryKey

router = APIRouter(prefix="/articles", tags=["articles"])

Writer = Annotated[Principal, Depends(RequirePermissions(Permission.ARTICLES_WRITE))]
Deleter = Annotated[Principal, Depends(RequirePermissions(Permission.ARTICLES_DELETE))]
SlugPath = Annotated[str, Path(min_length=1, max_length=96, pattern=SLUG_PATTERN)]


@router.post("/", response_model=ArticleRead, status_code=status.HTTP_201_CREATED)
async def create_article(data: ArticleCreate, writer: Writer, session: SessionDep) -> ArticleRead:
    """Write an article (`articles:write`), a draft unless `status` says published."""
    article = await service.create(session=session, data=data, author=writer)
    return ArticleRead.model_validate(article)


@router.get("/", response_model=Page[ArticleRead])
async def list_articles(
    session: SessionDep,
    viewer: OptionalPrincipal,
    status: ArticleStatus | None = None,
    page: PageNumber = 1,
    per_page: PerPage = 20,
) -> Page[ArticleRead]:
    """Published articles, newest first; no token needed. `status=draft` lists drafts for
    writers (an empty page for anyone else)."""
    rows, total = await service.list_page(
        session=session, viewer=viewer, status=status, page=page, per_page=per_page
    )
    return Page[ArticleRead].build(
        [ArticleRead.model_validate(a) for a in rows], total=total, page=page, per_page=per_page
    )


@router.get("/by-slug/{slug}", response_model=ArticleRead)
async def read_article_by_slug(
    slug: SlugPath, session: SessionDep, viewer: OptionalPrincipal
) -> ArticleRead:
    """A published article by its slug (drafts for writers)."""
    article = await service.get_by_slug(session=session, slug=slug, viewer=viewer)
    return ArticleRead.model_validate(article)


@router.get("/{article_id}", response_model=ArticleRead)
async def read_article(
    article_id: PrimaryKey, session: SessionDep, viewer: OptionalPrincipal
) -> ArticleRead:
    """A published article (drafts for writers); no token needed."""
    article = await service.get(session=session, article_id=article_id, viewer=viewer)
    return ArticleRead.model_validate(article)


@router.patch("/{article_id}", response_model=ArticleRead)
async def update_article(
    article_id: PrimaryKey, data: ArticleUpdate, writer: Writer, session: SessionDep
) -> ArticleRead:
    """Edit, publish or unpublish an article (`articles:write`)."""
    article = await service.get(session=session, article_id=article_id, viewer=writer)
    updated = await service.update(session=session, article=article, data=data)
    return ArticleRead.model_validate(updated)


@router.delete("/{article_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_article(article_id: PrimaryKey, deleter: Deleter, session: SessionDep) -> None:
    """Delete an article for good (`articles:delete`)."""
    article = await service.get(session=session, article_id=article_id, viewer=deleter)
    await service.remove(session=session, article=article)
