"""Orders through the in-process app: placing (nested validation, totals, the confirmation
mail), idempotency, the status machine with ETags, listing, the CSV export.

Tests where the database decides (constraints, the version counter, JSON) run on both
backends; validation and listing rules run on SQLite only."""

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from app.auth.models import Role
from app.email.models import Email
from app.orders.models import Order
from app.realtime.service import user_channel
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.orders import ADDRESS, ORDERS, order_body, place
from tests.support.settings import BuildClient

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
FULL_WIDTH_CODE = "\uff11\uff10\uff10-\uff10\uff10\uff10\uff11"  # an IME's digits


async def test_place_and_read_with_totals_and_confirmation_mail(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    response = await client.post(ORDERS, json=order_body(), headers=owner.headers)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending"
    assert order["owner_id"] == owner.id
    assert [line["name"] for line in order["lines"]] == ["Tea", "Cup", "Sencha"]
    assert order["shipping_address"] == ADDRESS
    totals = {t["currency"]: Decimal(t["amount"]) for t in order["totals"]}
    assert totals == {"USD": Decimal("21.00"), "EUR": Decimal("3.00"), "JPY": Decimal(3600)}
    # The embedded static table (USD=150, EUR=160): 21 * 150 + 3 * 160 + 3600.
    assert Decimal(order["total_jpy"]) == Decimal(7230)
    assert order["rates_jpy"] == {"USD": "150.00", "EUR": "160.00", "JPY": "1"}
    assert response.headers["etag"] == f'"order-{order["id"]}-v1"'

    read = await client.get(f"{ORDERS}{order['id']}", headers=owner.headers)
    assert read.json() == order
    assert read.headers["etag"] == response.headers["etag"]

    async with app.state.services.sessionmaker() as session:
        mail = (
            (await session.execute(select(Email).where(Email.template == "order_confirmation")))
            .scalars()
            .one()
        )
    assert mail.template == "order_confirmation"
    assert mail.recipient == owner.email
    assert mail.context["total_jpy"] == "7230"


@SQLITE_ONLY
async def test_only_the_owner_or_an_admin_sees_an_order(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    order = await place(client, owner)
    path = f"{ORDERS}{order['id']}"
    assert_envelope(await client.get(path, headers=other.headers), 403, "forbidden")
    assert (await client.get(path, headers=admin.headers)).status_code == 200
    assert_envelope(await client.get(f"{ORDERS}999999", headers=owner.headers), 404, "not_found")
    assert_envelope(await client.get(path), 401, "unauthorized")


# Each bad body, and the field path its 422 must name.
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"lines": []}, "body.lines"),
    ({"lines": [{"name": "x", "quantity": 0, "unit_price": "1", "currency": "JPY"}]},
     "body.lines.0.quantity"),
    ({"lines": [{"name": "x", "quantity": 1, "unit_price": "-1", "currency": "JPY"}]},
     "body.lines.0.unit_price"),
    ({"lines": [{"name": "x", "quantity": 1, "unit_price": "1", "currency": "GBP"}]},
     "body.lines.0.currency"),
    ({"shipping_address": {**ADDRESS, "postal_code": "1000001"}},
     "body.shipping_address.postal_code"),
    ({"shipping_address": {**ADDRESS, "postal_code": FULL_WIDTH_CODE}},
     "body.shipping_address.postal_code"),
    ({"shipping_address": {**ADDRESS, "prefecture": "Tokyo"}},
     "body.shipping_address.prefecture"),
    ({"shipping_address": {**ADDRESS, "city": ""}}, "body.shipping_address.city"),
    ({"shipping_address": {k: v for k, v in ADDRESS.items() if k != "street"}},
     "body.shipping_address.street"),
    ({"notes": "x" * 1001}, "body.notes"),
    ({"status": "paid"}, "body.status"),
]  # fmt: skip


@SQLITE_ONLY
async def test_invalid_orders_name_the_field_path(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()  # one account for every case: an account costs hashes
    for change, field in INVALID:
        response = await client.post(ORDERS, json=order_body(**change), headers=owner.headers)
        error = assert_envelope(response, 422, "validation_error")
        fields = {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
        assert field in fields, (field, error)
    assert (await client.get(ORDERS, headers=owner.headers)).json()["items"] == []


@pytest.mark.parametrize("shared_state", ["memory"], indirect=True)
async def test_limits_are_settings(build_client: BuildClient) -> None:
    async with build_client(order_max_lines=2, order_max_quantity=5) as (app, client):
        owner = await Factory(client, app).account()
        too_many = await client.post(ORDERS, json=order_body(), headers=owner.headers)
        error = assert_envelope(too_many, 422, "validation_error")
        assert error["details"] == [
            {"field": "body.lines", "message": "at most 2", "type": "too_large"}
        ]
        line = {"name": "x", "quantity": 6, "unit_price": "1", "currency": "JPY"}
        too_much = await client.post(ORDERS, json=order_body(lines=[line]), headers=owner.headers)
        error = assert_envelope(too_much, 422, "validation_error")
        assert error["details"][0]["field"] == "body.lines.0.quantity"  # type: ignore[index]


async def test_idempotency_key_replays_or_conflicts(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner, other = await factory.account(), await factory.account()
    key = {"Idempotency-Key": "order-2026-12-03-a"}
    first = await client.post(ORDERS, json=order_body(), headers={**owner.headers, **key})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = await client.post(ORDERS, json=order_body(), headers={**owner.headers, **key})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    changed = await client.post(
        ORDERS, json=order_body(notes="ring twice"), headers={**owner.headers, **key}
    )
    assert_envelope(changed, 409, "conflict")
    # Keys are per user: someone else's same key is a new order.
    theirs = await client.post(ORDERS, json=order_body(), headers={**other.headers, **key})
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]

    # Past ORDER_IDEMPOTENCY_TTL_SECONDS the key is free again.
    async with app.state.services.sessionmaker() as session:
        await session.execute(
            update(Order)
            .where(Order.id == first.json()["id"])
            .values(idempotency_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    fresh = await client.post(
        ORDERS, json=order_body(notes="ring twice"), headers={**owner.headers, **key}
    )
    assert fresh.status_code == 201
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] not in {first.json()["id"], theirs.json()["id"]}
    mine = (await client.get(ORDERS, headers=owner.headers)).json()["items"]
    assert len(mine) == 2


async def test_status_machine_with_if_match(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner, admin = await factory.account(), await factory.account(Role.ADMIN)
    order = await place(client, owner)
    path = f"{ORDERS}{order['id']}/status"
    etag = f'"order-{order["id"]}-v1"'

    async def change(who: Account, wanted: str, if_match: str | None) -> httpx.Response:
        headers = who.headers if if_match is None else {**who.headers, "If-Match": if_match}
        return await client.patch(path, json={"status": wanted}, headers=headers)

    assert_envelope(await change(owner, "paid", None), 428, "precondition_required")
    assert_envelope(await change(owner, "paid", '"order-1-v0"'), 412, "precondition_failed")
    assert_envelope(await change(owner, "paid", f"W/{etag}"), 412, "precondition_failed")
    assert_envelope(await change(owner, "delivered", etag), 409, "conflict")

    # Live: the owner's WebSocket and SSE stream relay what is published on the user channel.
    async with app.state.services.hub.subscribe(user_channel(owner.id)) as live:
        paid = await change(owner, "paid", etag)
        assert paid.status_code == 200, paid.text
        pushed = json.loads(await asyncio.wait_for(live.get(), timeout=10))
    assert pushed["kind"] == "order.status"
    assert pushed["data"] == {"order_id": order["id"], "status": "paid"}
    assert paid.json()["status"] == "paid"
    assert paid.json()["version"] == 2
    new_etag = paid.headers["etag"]
    assert new_etag == f'"order-{order["id"]}-v2"'
    assert_envelope(await change(owner, "cancelled", etag), 412, "precondition_failed")
    assert_envelope(await change(owner, "shipped", new_etag), 403, "forbidden")

    shipped = await change(admin, "shipped", new_etag)
    assert shipped.status_code == 200
    assert_envelope(await change(owner, "cancelled", shipped.headers["etag"]), 409, "conflict")
    delivered = await change(admin, "delivered", "*")
    assert delivered.json()["status"] == "delivered"

    # One live notification per change, stored for the owner.
    notes = (await client.get("/api/v1/notifications", headers=owner.headers)).json()
    titles = [n["title"] for n in notes["items"] if n["kind"] == "order.status"]
    assert sorted(titles) == sorted(
        f"Order #{order['id']} is {s}" for s in ("paid", "shipped", "delivered")
    )


@SQLITE_ONLY
async def test_list_filters_cursor_and_visibility(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    mine = [await place(client, owner) for _ in range(3)]
    theirs = await place(client, other)
    await client.patch(
        f"{ORDERS}{mine[0]['id']}/status",
        json={"status": "cancelled"},
        headers={**owner.headers, "If-Match": "*"},
    )

    first = (await client.get(ORDERS, params={"limit": 2}, headers=owner.headers)).json()
    assert [o["id"] for o in first["items"]] == [mine[2]["id"], mine[1]["id"]]
    rest = await client.get(
        ORDERS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=owner.headers
    )
    assert [o["id"] for o in rest.json()["items"]] == [mine[0]["id"]]
    assert rest.json()["next_cursor"] is None

    cancelled = await client.get(ORDERS, params={"status": "cancelled"}, headers=owner.headers)
    assert [o["id"] for o in cancelled.json()["items"]] == [mine[0]["id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = await client.get(ORDERS, params={"created_from": future}, headers=owner.headers)
    assert later.json()["items"] == []
    earlier = await client.get(ORDERS, params={"created_to": future}, headers=owner.headers)
    assert len(earlier.json()["items"]) == 3
    naive = await client.get(ORDERS, params={"created_to": "2026-01-01T00:00:00"},
                             headers=owner.headers)  # fmt: skip
    assert_envelope(naive, 422, "validation_error")
    bad_cursor = await client.get(ORDERS, params={"cursor": "nope"}, headers=owner.headers)
    assert_envelope(bad_cursor, 422, "validation_error")

    everyone = (await client.get(ORDERS, headers=admin.headers)).json()["items"]
    assert {o["id"] for o in everyone} == {*(o["id"] for o in mine), theirs["id"]}


@SQLITE_ONLY
async def test_export_streams_csv(client: httpx.AsyncClient, factory: Factory) -> None:
    owner, other = await factory.account(), await factory.account()
    mine = await place(client, owner, notes="=HYPERLINK(1)")
    await place(client, other)
    response = await client.get(f"{ORDERS}export", headers=owner.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "orders-" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in rows] == [mine["id"]]
    assert rows[0]["total_jpy"] == "7230"
    assert rows[0]["prefecture"] == "東京都"
    assert rows[0]["notes"] == "'=HYPERLINK(1)"  # spreadsheets must not run it


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_concurrent_retries_with_one_key_make_one_order(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Both requests pass the first look-up; the unique (owner, key) lets one insert, and the
    other answers with the winner's order instead of a 500."""
    owner = await factory.account()
    headers = {**owner.headers, "Idempotency-Key": "double-click"}
    responses = await asyncio.gather(
        *(client.post(ORDERS, json=order_body(), headers=headers) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 3
    assert len((await client.get(ORDERS, headers=owner.headers)).json()["items"]) == 1
