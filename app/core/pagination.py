"""The two pagination styles every list endpoint uses: offset pages (`paginate`, with ordering
from an allow-list) and keyset cursors, newest first (`after_cursor`, then `cursor_page`)."""

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.core.errors import InvalidCursor

RowT = TypeVar("RowT")
SelectT = TypeVar("SelectT", bound=Select[*tuple[Any, ...]])


def order_clauses(
    order_by: str, columns: Mapping[str, InstrumentedAttribute[Any]], tiebreak: Any
) -> list[ColumnElement[Any]]:
    """`-name` sorts descending; the id breaks ties so pages never overlap or skip."""
    column = columns[order_by.removeprefix("-")]
    descending = order_by.startswith("-")
    return [
        column.desc() if descending else column.asc(),
        tiebreak.desc() if descending else tiebreak.asc(),
    ]


async def paginate(
    session: AsyncSession, statement: Select[RowT], *, page: int, per_page: int
) -> tuple[Sequence[RowT], int]:
    total = (
        await session.execute(select(func.count()).select_from(statement.order_by(None).subquery()))
    ).scalar_one()
    if total == 0 or (page - 1) * per_page >= total:
        return [], total
    rows = (
        (await session.execute(statement.limit(per_page).offset((page - 1) * per_page)))
        .scalars()
        .all()
    )
    return rows, total


# -- keyset cursors ---------------------------------------------------------------------------


def encode_cursor(last_id: int) -> str:
    """Opaque to clients, so the key behind it can change without breaking them."""
    return base64.urlsafe_b64encode(json.dumps({"id": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)["id"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidCursor() from exc
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise InvalidCursor()
    return value


def after_cursor(
    statement: SelectT, key: InstrumentedAttribute[int], *, cursor: str | None, limit: int
) -> SelectT:
    """Newest first by `key`, the rows older than the cursor, one more than a page: the extra
    row tells `cursor_page` whether there is a next page without counting."""
    statement = statement.order_by(key.desc()).limit(limit + 1)
    if cursor is not None:
        statement = statement.where(key < decode_cursor(cursor))
    return statement


def cursor_page(
    rows: Sequence[RowT], *, limit: int, key: Callable[[RowT], int]
) -> tuple[Sequence[RowT], str | None]:
    """A page of the rows `after_cursor` selected, and the cursor of the next (None at end)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(key(page[-1]))
