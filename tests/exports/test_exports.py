"""FILES-3: exports streamed in batches, checked row by row against the database."""

import csv
import io
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from app.auth.models import Role
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.exports.service import (
    ITEM_COLUMNS,
    USER_COLUMNS,
    escape_formula,
    items_query,
    stream_export,
)
from app.items.models import Item
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory

FORMULAS = ['=HYPERLINK("http://x")', "+1+2", "-3", "@SUM(A1)", "\tTab", "plain"]


def expected_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[no-any-return]
    text = str(value)
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


async def db_rows(app: FastAPI, columns: tuple[Any, ...], *where: Any) -> list[tuple[Any, ...]]:
    async with app.state.services.sessionmaker() as session:
        statement = select(*columns).where(*where).order_by(columns[0])
        return [tuple(row) for row in (await session.execute(statement)).all()]


async def make_items(factory: Factory, owner: Account, count: int) -> None:
    for n in range(count):
        title = FORMULAS[n % len(FORMULAS)] + f" {n}"
        await factory.item(owner, title=title, description=f"line 1\nline \"2\", {n}",
                           price=f"{n}.5{n % 10}")  # fmt: skip


async def test_items_csv_matches_the_database(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner, other = await factory.account(), await factory.account()
    await make_items(factory, owner, 23)
    await factory.item(other)
    deleted = await factory.item(owner)
    await client.delete(f"/api/v1/items/{deleted['id']}", headers=owner.headers)

    response = await client.get("/api/v1/exports/items", headers=owner.headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="items-')
    assert disposition.split(";")[1].strip().endswith('.csv"')
    reader = list(csv.reader(io.StringIO(response.text)))
    assert reader[0] == [c.key for c in ITEM_COLUMNS]
    expected = await db_rows(
        app, ITEM_COLUMNS, Item.owner_id == owner.id, Item.deleted_at.is_(None)
    )
    assert len(expected) == 23
    assert reader[1:] == [[expected_cell(v) for v in row] for row in expected]
    titles = [line[1] for line in reader[1:]]
    assert titles[:6] == ["'=HYPERLINK(\"http://x\") 0", "'+1+2 1", "'-3 2", "'@SUM(A1) 3",
                          "'\tTab 4", "plain 5"]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "accept"),
    [("?format=ndjson", None), ("", "application/x-ndjson"), ("?format=ndjson", "text/csv")],
)
async def test_items_ndjson_matches_the_database(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, query: str, accept: str | None
) -> None:
    owner = await factory.account()
    await make_items(factory, owner, 15)
    headers = {**owner.headers, **({"Accept": accept} if accept else {})}
    response = await client.get(f"/api/v1/exports/items{query}", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert ".ndjson" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    expected = await db_rows(app, ITEM_COLUMNS, Item.owner_id == owner.id)
    assert len(lines) == len(expected) == 15
    for line, row in zip(lines, expected, strict=True):
        assert line["id"] == row[0]
        assert line["title"] == row[1]  # NDJSON is data, not a spreadsheet: no escaping
        assert line["description"] == row[2]
        assert Decimal(line["price"]) == row[3]
        assert line["currency"] == row[4]
        assert line["created_at"] == row[5].isoformat()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the same encoding on both
async def test_items_as_one_streamed_json_array(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    await make_items(factory, owner, 9)
    expected = await db_rows(app, ITEM_COLUMNS, Item.owner_id == owner.id)
    for query, accept in (("?format=json", None), ("", "application/json")):
        headers = {**owner.headers, **({"Accept": accept} if accept else {})}
        response = await client.get(f"/api/v1/exports/items{query}", headers=headers)
        assert response.headers["content-type"] == "application/json"
        assert ".json" in response.headers["content-disposition"]
        assert [row["id"] for row in response.json()] == [row[0] for row in expected]
    # Batches smaller than the export, one that ends exactly on a batch, and none at all.
    for owner_id, batch_size in ((owner.id, 4), (owner.id, 3), (owner.id + 1, 4)):
        chunks = [
            chunk
            async for chunk in stream_export(
                sessionmaker=app.state.services.sessionmaker,
                statement=items_query(owner_id=owner_id),
                export_format="json",
                batch_size=batch_size,
            )
        ]
        rows = json.loads(b"".join(chunks))
        assert [row["id"] for row in rows] == (
            [row[0] for row in expected] if owner_id == owner.id else []
        )
        assert rows == [] or rows[0]["title"] == expected[0][1]  # data, not formula-escaped


async def test_empty_export_has_a_header_only(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    response = await client.get("/api/v1/exports/items", headers=owner.headers)
    assert response.text == ",".join(c.key for c in ITEM_COLUMNS) + "\r\n"
    ndjson = await client.get("/api/v1/exports/items?format=ndjson", headers=owner.headers)
    assert ndjson.text == ""


async def test_users_export_is_for_admins(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    user = await factory.account()
    admin = await factory.account(Role.ADMIN)
    for n in range(10):
        await factory.register(f"export{n}", full_name=f"=cmd|' /C calc'!A{n}")
    refused = await client.get("/api/v1/exports/users", headers=user.headers)
    assert_envelope(refused, 403, "forbidden")
    assert_envelope(await client.get("/api/v1/exports/users"), 401, "unauthorized")

    response = await client.get("/api/v1/exports/users", headers=admin.headers)
    assert response.status_code == 200
    reader = list(csv.reader(io.StringIO(response.text)))
    assert reader[0] == [c.key for c in USER_COLUMNS]
    expected = await db_rows(app, USER_COLUMNS)
    assert len(expected) == 12
    assert reader[1:] == [[expected_cell(v) for v in row] for row in expected]
    assert all(line[3].startswith("'=") for line in reader[3:])
    ndjson = await client.get("/api/v1/exports/users?format=ndjson", headers=admin.headers)
    assert [json.loads(x)["username"] for x in ndjson.text.splitlines()] == [
        row[1] for row in expected
    ]
    assert "hashed_password" not in response.text
    assert "argon2" not in response.text


async def test_unknown_format_is_422(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    response = await client.get("/api/v1/exports/items?format=xlsx", headers=owner.headers)
    assert_envelope(response, 422, "validation_error")


async def test_exports_stream_in_batches(
    factory: Factory, app: FastAPI, settings: Settings
) -> None:
    """One encoded chunk per database batch (7 rows here), never the whole table at once.
    (httpx's ASGI transport gathers the body, so this reads the service's iterator itself.)"""
    owner = await factory.account()
    await make_items(factory, owner, 20)
    chunks = [
        chunk
        async for chunk in stream_export(
            sessionmaker=app.state.services.sessionmaker, statement=items_query(owner_id=owner.id),
            export_format="ndjson", batch_size=settings.export_batch_size,
        )
    ]  # fmt: skip
    assert [chunk.count(b"\n") for chunk in chunks] == [7, 7, 6]


async def test_an_export_holds_no_connection_between_batches(
    factory: Factory, app: FastAPI
) -> None:
    """While the client reads a batch (the generator suspended at its yield), the export
    holds no pooled connection: a stalled reader can't starve the pool (issue 13)."""
    owner = await factory.account()
    await make_items(factory, owner, 20)
    # An engine of its own: the app's pool is shared with its periodic tasks (the job gauge),
    # which may hold a connection at any moment without the export having one.
    settings = app.state.services.settings
    engine = create_engine(settings)
    try:
        rows = 0
        async for chunk in stream_export(
            sessionmaker=create_sessionmaker(engine), statement=items_query(owner_id=owner.id),
            export_format="ndjson", batch_size=settings.export_batch_size,
        ):  # fmt: skip
            rows += chunk.count(b"\n")
            assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert rows == 20
    finally:
        await engine.dispose()


async def test_rows_changed_during_an_export_are_never_repeated_and_others_never_skipped(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    """Not one snapshot, but a keyset walk: between two batches a row ahead is deleted, one
    behind is updated and one is added; every row that existed throughout comes exactly
    once, in id order, the deleted one doesn't, the new one (a higher id) does."""
    owner = await factory.account()
    await make_items(factory, owner, 20)
    ids = [row[0] for row in await db_rows(app, (Item.id,), Item.owner_id == owner.id)]
    chunks = stream_export(
        sessionmaker=app.state.services.sessionmaker, statement=items_query(owner_id=owner.id),
        export_format="ndjson", batch_size=app.state.services.settings.export_batch_size,
    )  # fmt: skip
    first = [json.loads(line) for line in (await anext(chunks)).splitlines()]
    assert [row["id"] for row in first] == ids[: app.state.services.settings.export_batch_size]
    deleted = await client.delete(f"/api/v1/items/{ids[15]}", headers=owner.headers)
    assert deleted.status_code == 204, deleted.text
    edited = await client.patch(
        f"/api/v1/items/{ids[2]}", json={"title": "edited"}, headers=owner.headers
    )
    assert edited.status_code == 200, edited.text
    added = await factory.item(owner, title="added late", price="1.00")
    rest = [json.loads(line) for chunk in [c async for c in chunks] for line in chunk.splitlines()]
    exported = [row["id"] for row in first + rest]
    assert exported == [i for i in ids if i != ids[15]] + [added["id"]]


SIGNS = tuple("=+-@\uff1d\uff0b\uff0d\uff20")
SEPARATORS = (",", ";", "\t", "|", "\r", "\n")


@given(st.text(alphabet=" ,;\t|\r\nab1'=+-@\uff1d\uff0b\uff0d\uff20", max_size=30))
def test_no_piece_of_an_escaped_cell_starts_a_formula(value: str) -> None:
    """Whatever separator a spreadsheet splits the file with (ours or a locale's), no piece of
    a cell starts with a formula sign, blanks before it ignored as some importers do."""
    escaped = escape_formula(value)
    assert escaped.replace("'", "") == value.replace("'", "")  # quotes added, nothing else
    pieces = [escaped]
    for separator in SEPARATORS:
        pieces += escaped.split(separator)
    for piece in pieces:
        assert not piece.lstrip(" \t\r").startswith(SIGNS), (value, escaped, piece)


async def test_a_formula_after_a_separator_is_escaped_in_the_export(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    await factory.item(owner, title='Price;=HYPERLINK("http://x")', description="a|@SUM(A1)")
    response = await client.get("/api/v1/exports/items", headers=owner.headers)
    row = next(csv.reader(io.StringIO(response.text.split("\r\n", 1)[1])))
    assert row[1:3] == ['Price;\'=HYPERLINK("http://x")', "a|'@SUM(A1)"]
