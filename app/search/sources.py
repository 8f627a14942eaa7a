"""What search looks through: one registration per source.

A source names its model, the text columns its full-text index covers (in weight order, as
its migration built the index with app.core.fulltext) and who may see a row. A new source
is one line here plus, in its migration, `fulltext.upgrade_ddl(dialect, table, columns)` and
`downgrade_ddl` (as 0012_posts.py does).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, true

from app.articles import service as articles
from app.articles.models import Article
from app.auth.principal import Principal
from app.items.models import Item
from app.posts.models import Post


@dataclass(frozen=True, slots=True)
class SearchSource:
    name: str  # the `type` a client asks for, and the result's `type`
    model: Any  # a mapped class with an integer `id` and these columns
    columns: tuple[str, ...]  # the first is the result's title
    visible: Callable[[Principal | None], ColumnElement[bool]]


SOURCES: tuple[SearchSource, ...] = (
    SearchSource("items", Item, ("title", "description"), lambda _: Item.deleted_at.is_(None)),
    SearchSource("articles", Article, ("title", "body"), articles.visible_to),
    # Every post is public (a deleted post is gone, not hidden).
    SearchSource("posts", Post, ("title", "body"), lambda _: true()),
)
SOURCE_NAMES = tuple(source.name for source in SOURCES)
