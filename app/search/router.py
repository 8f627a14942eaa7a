from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.auth.dependencies import OptionalPrincipal
from app.core.dependencies import SessionDep, SettingsDep
from app.core.limits import rate_limit
from app.core.schemas import NO_NUL_PATTERN
from app.search import service
from app.search.errors import QueryTooLong
from app.search.schemas import SearchResults
from app.search.sources import SOURCE_NAMES

router = APIRouter(tags=["search"])

# The schema's ceiling; SEARCH_QUERY_MAX_CHARS may set a lower one.
QUERY_MAX_CHARS = 200
SearchQuery = Annotated[
    str,
    Query(min_length=1, max_length=QUERY_MAX_CHARS, pattern=NO_NUL_PATTERN, description="Words"),
]
SourceType = Annotated[
    str | None,
    Query(
        pattern=f"^({'|'.join(SOURCE_NAMES)})$",
        description=f"One source ({', '.join(SOURCE_NAMES)}); left out: all of them",
    ),
]


@router.get(
    "/search",
    response_model=SearchResults,
    dependencies=[Depends(rate_limit(setting="rate_limit_search"))],
)
async def search(
    q: SearchQuery,
    session: SessionDep,
    settings: SettingsDep,
    viewer: OptionalPrincipal,
    type: SourceType = None,
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> SearchResults:
    """Full-text search of what the caller may see (no token: the public part), best first,
    with highlighted snippets. Rate limited per client (RATE_LIMIT_SEARCH)."""
    if len(q) > settings.search_query_max_chars:
        raise QueryTooLong(settings.search_query_max_chars)
    hits = await service.search(
        session=session,
        q=q,
        types=(type,) if type else None,
        viewer=viewer,
        limit=limit,
    )
    return SearchResults(query=q, results=hits)
