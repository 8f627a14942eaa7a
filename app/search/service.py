"""Full-text search over the registered sources (app.search.sources), one query per source.

PostgreSQL ranks with ts_rank_cd over the generated `search_vector` (GIN-indexed) and reads
the query as a web search (`websearch_to_tsquery`: words, "phrases", -exclusions, or); SQLite
ranks with FTS5's bm25 and matches every word of the query (each one quoted, so no query
text is ever FTS5 syntax). Both answer the same shape: the best `limit` hits of all sources
together, with an HTML-escaped snippet whose matches are in <mark></mark>.
"""

import html
import re
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Select, func, literal, literal_column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.principal import Principal
from app.core import fulltext
from app.search.schemas import SearchHit
from app.search.sources import SOURCES, SearchSource

_REGCONFIG = f"'{fulltext.TS_CONFIG}'::regconfig"
_HEADLINE = (
    f"StartSel={fulltext.MARK_START}, StopSel={fulltext.MARK_END}, "
    'MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=" … "'
)
_SNIPPET_TOKENS = 24
_WORD = re.compile(r"\w+")


def highlight(raw: str | None) -> str:
    """Escape the stored text, then turn the database's match markers into <mark> tags."""
    text = html.escape(raw or "", quote=False)
    return text.replace(fulltext.MARK_START, "<mark>").replace(fulltext.MARK_END, "</mark>")


def fts5_query(q: str) -> str | None:
    """Every word of `q`, each a quoted FTS5 string (AND): no operator can come from a user."""
    words = _WORD.findall(q)
    return " ".join(f'"{word}"' for word in words) if words else None


def _column(source: SearchSource, name: str) -> Any:
    return getattr(source.model, name)


def _postgres(source: SearchSource, q: str, viewer: Principal | None, limit: int) -> Select[Any]:
    model = source.model
    regconfig: ColumnElement[Any] = literal_column(_REGCONFIG)
    query = func.websearch_to_tsquery(regconfig, literal(q))
    vector: ColumnElement[Any] = literal_column(f"{model.__tablename__}.{fulltext.VECTOR_COLUMN}")
    score = func.ts_rank_cd(vector, query)
    matches: ColumnElement[bool] = vector.op("@@", return_type=Boolean)(query)
    # Rank in the index first; headlines (costly: they re-parse the text) only for the best.
    ranked = (
        select(model.id.label("id"), score.label("score"))
        .where(matches, source.visible(viewer))
        .order_by(score.desc(), model.id.desc())
        .limit(limit)
        .subquery()
    )
    text = func.concat_ws(" ", *(_column(source, c) for c in source.columns))
    snippet = func.ts_headline(regconfig, text, query, literal(_HEADLINE))
    return (
        select(ranked.c.id, _column(source, source.columns[0]), snippet, ranked.c.score)
        .join_from(ranked, model, model.id == ranked.c.id)
        .order_by(ranked.c.score.desc(), ranked.c.id.desc())
    )


def _sqlite(source: SearchSource, match: str, viewer: Principal | None, limit: int) -> Select[Any]:
    model = source.model
    fts = fulltext.fts_table(model.__tablename__)
    bm25: ColumnElement[float] = literal_column(
        fulltext.sqlite_rank(model.__tablename__, len(source.columns))
    )
    snippet: ColumnElement[str] = literal_column(
        f"snippet({fts}, -1, char(2), char(3), ' … ', {_SNIPPET_TOKENS})"
    )
    matches: ColumnElement[bool] = literal_column(fts).op("MATCH", return_type=Boolean)(
        literal(match)
    )
    return (
        select(model.id, _column(source, source.columns[0]), snippet, -bm25)
        .select_from(model)
        .join(table(fts), literal_column(f"{fts}.rowid") == model.id)
        .where(matches, source.visible(viewer))
        .order_by(bm25, model.id.desc())
        .limit(limit)
    )


async def search(
    *,
    session: AsyncSession,
    q: str,
    types: tuple[str, ...] | None,
    viewer: Principal | None,
    limit: int,
) -> list[SearchHit]:
    postgres = session.get_bind().dialect.name == "postgresql"
    match = None if postgres else fts5_query(q)
    if not postgres and match is None:
        return []  # nothing searchable (punctuation only)
    hits: list[SearchHit] = []
    for source in SOURCES:
        if types is not None and source.name not in types:
            continue
        if postgres:
            statement = _postgres(source, q, viewer, limit)
        else:
            assert match is not None
            statement = _sqlite(source, match, viewer, limit)
        for id_, title, snippet, score in (await session.execute(statement)).all():
            hits.append(
                SearchHit(
                    type=source.name,
                    id=id_,
                    title=title,
                    snippet=highlight(snippet),
                    score=float(score),
                )
            )
    hits.sort(key=lambda hit: (-hit.score, hit.type, -hit.id))
    return hits[:limit]
