from decimal import Decimal

import httpx
import pytest

from app.auth.models import Role
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory


async def test_create_and_read(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    response = await client.post(
        "/api/v1/items/",
        headers=owner.headers,
        json={"title": "Lamp", "description": "Brass", "price": "1234.50", "currency": "EUR"},
    )
    assert response.status_code == 201
    item = response.json()
    assert item["owner_id"] == owner.id
    assert Decimal(item["price"]) == Decimal("1234.50")
    assert item["deleted_at"] is None
    read = await client.get(f"/api/v1/items/{item['id']}")  # public: no token needed
    assert read.json() == item


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"price": "-1"}, "body.price"),
        ({"price": "1.234"}, "body.price"),
        ({"price": "NaN"}, "body.price"),
        ({"price": "1e20"}, "body.price"),
        ({"currency": "GBP"}, "body.currency"),
        ({"title": ""}, "body.title"),
        ({"title": "a\x00b"}, "body.title"),
        ({"owner_id": 5}, "body.owner_id"),
    ],
)
async def test_create_rejects_bad_input(
    client: httpx.AsyncClient, factory: Factory, payload: dict[str, object], field: str
) -> None:
    owner = await factory.account()
    body = {"title": "ok", "price": "1.00", **payload}
    response = await client.post("/api/v1/items/", headers=owner.headers, json=body)
    error = assert_envelope(response, 422, "validation_error")
    assert field in {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    assert (await client.get("/api/v1/items/")).json()["total"] == 0


async def test_create_needs_a_user(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/items/", json={"title": "x", "price": "1"})
    assert_envelope(response, 401, "unauthorized")


async def test_only_owner_or_admin_may_change(client: httpx.AsyncClient, factory: Factory) -> None:
    owner, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    item = await factory.item(owner, title="Original")
    path = f"/api/v1/items/{item['id']}"

    denied = await client.patch(path, headers=other.headers, json={"title": "Hijacked"})
    assert_envelope(denied, 403, "forbidden")
    assert_envelope(await client.delete(path, headers=other.headers), 403, "forbidden")
    assert (await client.get(path)).json()["title"] == "Original"

    by_owner = await client.patch(path, headers=owner.headers, json={"price": "5.00"})
    assert by_owner.status_code == 200
    assert by_owner.json()["title"] == "Original"
    by_admin = await client.patch(path, headers=admin.headers, json={"title": "Moderated"})
    assert by_admin.json()["title"] == "Moderated"


@pytest.mark.parametrize(
    "payload", [{"title": None}, {"price": None}, {"owner_id": 99}, {"deleted_at": None}]
)
async def test_update_refuses_nulls_and_unknown_fields(
    client: httpx.AsyncClient, factory: Factory, payload: dict[str, object]
) -> None:
    owner = await factory.account()
    item = await factory.item(owner)
    response = await client.patch(
        f"/api/v1/items/{item['id']}", headers=owner.headers, json=payload
    )
    assert_envelope(response, 422, "validation_error")


async def test_soft_delete_hides_from_all_but_admins(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    admin = await factory.account(Role.ADMIN)
    item = await factory.item(owner)
    path = f"/api/v1/items/{item['id']}"
    assert (await client.delete(path, headers=owner.headers)).status_code == 204
    assert_envelope(await client.get(path), 404, "not_found")
    assert_envelope(await client.get(path, headers=owner.headers), 404, "not_found")
    assert_envelope(await client.patch(path, headers=owner.headers, json={}), 404, "not_found")
    seen_by_admin = await client.get(path, headers=admin.headers)
    assert seen_by_admin.json()["deleted_at"] is not None
    assert (await client.get("/api/v1/items/")).json()["total"] == 0


async def test_hard_delete_is_admin_only(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    admin = await factory.account(Role.ADMIN)
    item = await factory.item(owner)
    path = f"/api/v1/items/{item['id']}"
    denied = await client.delete(f"{path}?hard=true", headers=owner.headers)
    assert assert_envelope(denied, 403, "forbidden")["message"] == (
        "Missing permission: items:hard_delete"
    )
    assert (await client.get(path)).status_code == 200
    assert (await client.delete(f"{path}?hard=true", headers=admin.headers)).status_code == 204
    assert_envelope(await client.get(path, headers=admin.headers), 404, "not_found")


async def test_list_pages_filters_search_order(client: httpx.AsyncClient, factory: Factory) -> None:
    alice, bob = await factory.account(), await factory.account()
    for title, price, owner in [
        ("Red chair", "10.00", alice),
        ("Blue chair", "25.50", alice),
        ("Red table", "99.99", bob),
        ("50% off lamp", "5.00", bob),
    ]:
        await factory.item(owner, title=title, price=price)  # fmt: skip

    async def titles(**params: str | int) -> list[str]:
        response = await client.get("/api/v1/items/", params=params)
        assert response.status_code == 200, response.text
        return [i["title"] for i in response.json()["items"]]

    assert await titles(order_by="price") == [
        "50% off lamp",
        "Red chair",
        "Blue chair",
        "Red table",
    ]
    assert await titles(search="RED", order_by="title") == ["Red chair", "Red table"]
    assert await titles(search="50%") == ["50% off lamp"]
    assert await titles(min_price="10", max_price="30", order_by="-price") == [
        "Blue chair",
        "Red chair",
    ]
    assert await titles(owner_id=bob.id, order_by="id") == ["Red table", "50% off lamp"]
    page = (await client.get("/api/v1/items/", params={"per_page": 3, "page": 2})).json()
    assert (page["total"], page["total_pages"], page["has_next"], len(page["items"])) == (
        4,
        2,
        False,
        1,
    )


@pytest.mark.parametrize(
    "params",
    [{"order_by": "owner.password"}, {"min_price": "-5"}, {"min_price": "abc"}, {"per_page": 0},
     {"owner_id": "0"}, {"search": ""}, {"search": "x" * 101}],
)  # fmt: skip
async def test_list_rejects_bad_queries(
    client: httpx.AsyncClient, params: dict[str, str | int]
) -> None:
    assert_envelope(await client.get("/api/v1/items/", params=params), 422, "validation_error")


async def test_v2_cursor_pages_walk_everything_once(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    created = [(await factory.item(owner, title=f"n{n}"))["id"] for n in range(7)]
    deleted = created[3]
    await client.delete(f"/api/v1/items/{deleted}", headers=owner.headers)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v2/items/", params=params)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(created) - {deleted}, reverse=True)


@pytest.mark.parametrize("cursor", ["garbage", "eyJpZCI6ICJ4In0", "eyJpZCI6IC01fQ", "e30"])
async def test_v2_bad_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/api/v2/items/", params={"cursor": cursor})
    error = assert_envelope(response, 422, "validation_error")
    assert error["details"][0]["field"] == "query.cursor"  # type: ignore[index]


async def test_v2_keeps_item_crud(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    response = await client.post(
        "/api/v2/items/", headers=owner.headers, json={"title": "v2", "price": "1"}
    )
    assert response.status_code == 201
    assert (await client.get(f"/api/v2/items/{response.json()['id']}")).status_code == 200
