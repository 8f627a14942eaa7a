"""Offset pages and ordering from an allow-list, shared by every list endpoint."""

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

RowT = TypeVar("RowT")


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
