"""CSV, NDJSON and JSON-array exports streamed from the database in batches: memory stays
flat whatever the row count, and no database connection is held while the client reads.

Each batch is a keyset query (`WHERE id > last ORDER BY id LIMIT n`) in a session of its own,
closed before the batch is sent: a client that reads slowly, or not at all, holds a socket,
never a pooled connection (issue 13: 25 stalled downloads held the whole pool, and everyone
else got 500 after the pool timeout). A server-side cursor would need its connection for the
whole download.

Consistency: an export is not one snapshot; each batch sees the rows committed when it runs.
The walk by a unique key never repeats a row and never skips one that existed throughout;
a row inserted (ids only grow) or deleted during the export may or may not appear, and a row
updated during it appears once, as it was when its batch was read."""

import asyncio
import contextlib
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Row, Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import User
from app.items.models import Item

ExportFormat = Literal["csv", "ndjson", "json"]
AnySelect = Select[*tuple[Any, ...]]
MEDIA_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
}
# A spreadsheet runs a cell starting with one of these as a formula (OWASP: CSV injection),
# the full-width signs included: a Japanese IME types them, and Excel reads them as ASCII.
_SIGNS = "=+-@\uff1d\uff0b\uff0d\uff20"
FORMULA_PREFIXES = (*_SIGNS, "\t", "\r")
# A file opened with another separator than ours (`;` or tab in many locales, `|` by some
# importers) splits a cell at these, and each piece is judged as a cell of its own, so a
# formula may hide after one: `a;=HYPERLINK(...)`.
_FORMULA_AFTER_SEPARATOR = re.compile(f"([,;\t|\r\n][ \t]*)([{re.escape(_SIGNS)}])")

ITEM_COLUMNS = (
    Item.id, Item.title, Item.description, Item.price, Item.currency, Item.created_at,
    Item.updated_at,
)  # fmt: skip
USER_COLUMNS = (
    User.id, User.username, User.email, User.full_name, User.role, User.is_active,
    User.is_verified, User.created_at, User.last_login_at,
)  # fmt: skip


def choose_format(*, requested: ExportFormat | None, accept: str | None) -> ExportFormat:
    if requested is not None:
        return requested
    if accept and ("application/x-ndjson" in accept or "application/jsonl" in accept):
        return "ndjson"
    if accept and "application/json" in accept:
        return "json"
    return "csv"


def items_query(*, owner_id: int) -> AnySelect:
    return (
        select(*ITEM_COLUMNS)
        .where(Item.owner_id == owner_id, Item.deleted_at.is_(None))
        .order_by(Item.id)
    )


def users_query() -> AnySelect:
    return select(*USER_COLUMNS).order_by(User.id)


def escape_formula(value: str) -> str:
    """A quote before anything a spreadsheet would run: the cell's start (after blanks, which
    some importers trim) and every piece a separator could split off."""
    value = _FORMULA_AFTER_SEPARATOR.sub(r"\1'\2", value)
    return "'" + value if value.lstrip(" ").startswith(FORMULA_PREFIXES) else value


def _plain(value: object) -> object:
    """A JSON-ready value: decimals as exact strings, times in ISO 8601, enums as strings."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return str(value)  # StrEnum members become plain strings
    return value


def _csv_cell(value: object) -> object:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return escape_formula(value)
    return value


def _encode_csv(rows: Sequence[Row[Any]], header: Sequence[str] | None) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue().encode()


def _json_objects(rows: Sequence[Row[Any]], names: Sequence[str]) -> list[str]:
    return [
        json.dumps(dict(zip(names, map(_plain, row), strict=True)), ensure_ascii=False)
        for row in rows
    ]


def _encode_ndjson(rows: Sequence[Row[Any]], names: Sequence[str]) -> bytes:
    return "".join(line + "\n" for line in _json_objects(rows, names)).encode()


def _encode_json_elements(rows: Sequence[Row[Any]], names: Sequence[str], *, first: bool) -> bytes:
    """A batch of a JSON array's elements: a comma before each but the array's first."""
    text = ",\n".join(_json_objects(rows, names))
    return (text if first else ",\n" + text).encode()


async def stream_export(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: AnySelect,
    export_format: ExportFormat,
    batch_size: int,
    gate: asyncio.Semaphore | None = None,
) -> AsyncIterator[bytes]:
    """Encoded batches, each read in its own short session (see the module's docstring).

    The statement's first column is the key the walk follows: unique and not null (the id,
    in both queries above); the statement's own order is replaced by it. `gate` bounds how
    many streams read the database at once (app.core.streams)."""
    columns = list(statement.selected_columns)
    names = [str(column.key) for column in columns]
    key: ColumnElement[Any] = columns[0]
    page = statement.order_by(None).order_by(key).limit(batch_size)
    if export_format == "csv":
        yield _encode_csv([], names)
    elif export_format == "json":
        yield b"["  # one array, streamed: valid JSON only once the closing bracket arrives
    last: object = None
    while True:
        query = page if last is None else page.where(key > last)
        async with gate or contextlib.nullcontext(), sessionmaker() as session:
            batch = (await session.execute(query)).all()
        if batch:
            if export_format == "csv":
                yield _encode_csv(batch, None)
            elif export_format == "json":
                yield _encode_json_elements(batch, names, first=last is None)
            else:
                yield _encode_ndjson(batch, names)
            last = batch[-1][0]
        if len(batch) < batch_size:
            break
    if export_format == "json":
        yield b"]\n"
