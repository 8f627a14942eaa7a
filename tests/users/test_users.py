import httpx
import pytest
from fastapi import FastAPI

from app.auth.models import Role
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.queries import counted_statements
from tests.support.settings import BuildClient

PUBLIC_FIELDS = {"id", "username", "full_name", "bio", "created_at", "display_name"}


async def test_me_is_private_view(client: httpx.AsyncClient, factory: Factory) -> None:
    account = await factory.account()
    me = (await client.get("/api/v1/users/me", headers=account.headers)).json()
    assert me["id"] == account.id
    assert me["email"] == account.email
    assert me["role"] == "user"
    assert me["last_login_at"] is not None


async def test_update_me(client: httpx.AsyncClient, factory: Factory) -> None:
    account = await factory.account()
    response = await client.patch(
        "/api/v1/users/me", headers=account.headers, json={"full_name": "Ada L", "bio": "Hi"}
    )
    assert response.status_code == 200
    assert response.json()["full_name"] == "Ada L"
    cleared = await client.patch("/api/v1/users/me", headers=account.headers, json={"bio": None})
    assert cleared.json()["bio"] is None
    assert cleared.json()["full_name"] == "Ada L"


@pytest.mark.parametrize(
    "payload",
    [{"role": "admin"}, {"is_superuser": True}, {"is_active": False}, {"email": "x@y.io"},
     {"full_name": "ok", "role": "superuser"}],
)  # fmt: skip
async def test_update_me_refuses_mass_assignment(
    client: httpx.AsyncClient, factory: Factory, payload: dict[str, object]
) -> None:
    account = await factory.account()
    response = await client.patch("/api/v1/users/me", headers=account.headers, json=payload)
    assert_envelope(response, 422, "validation_error")
    me = (await client.get("/api/v1/users/me", headers=account.headers)).json()
    assert me["role"] == "user"
    assert me["is_active"] is True
    assert me["full_name"] is None  # nothing of the refused body was applied


async def test_public_and_private_views(client: httpx.AsyncClient, factory: Factory) -> None:
    alice, bob = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    as_other = (await client.get(f"/api/v1/users/{alice.id}", headers=bob.headers)).json()
    assert set(as_other) == PUBLIC_FIELDS
    as_self = (await client.get(f"/api/v1/users/{alice.id}", headers=alice.headers)).json()
    assert as_self["email"] == alice.email
    as_admin = (await client.get(f"/api/v1/users/{alice.id}", headers=admin.headers)).json()
    assert as_admin["email"] == alice.email
    missing = await client.get("/api/v1/users/999999", headers=bob.headers)
    assert_envelope(missing, 404, "not_found")
    anonymous = await client.get(f"/api/v1/users/{alice.id}")
    assert_envelope(anonymous, 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/users/"), ("PATCH", "/api/v1/users/{id}"), ("DELETE", "/api/v1/users/{id}")],
)
async def test_admin_endpoints_refuse_users(
    client: httpx.AsyncClient, factory: Factory, method: str, path: str
) -> None:
    user, victim = await factory.account(), await factory.account()
    response = await client.request(
        method,
        path.format(id=victim.id),
        headers=user.headers,
        json={"role": "admin"} if method == "PATCH" else None,
    )
    assert_envelope(response, 403, "forbidden")


async def make_users(factory: Factory) -> Account:
    admin = await factory.account(Role.ADMIN, username="zz_admin")
    for name, full_name in [("alice", "Alice Liddell"), ("bob", "Robert Paulson"),
                            ("carol", "Carol Alice Danvers")]:  # fmt: skip
        await factory.register(name, full_name=full_name)
    return admin


async def test_admin_list_pages_search_filters_and_order(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await make_users(factory)

    async def page(**params: str | int | bool) -> dict[str, object]:
        response = await client.get("/api/v1/users/", headers=admin.headers, params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = await page(per_page=2, order_by="username")
    assert first["total"] == 4
    assert first["total_pages"] == 2
    assert first["has_next"] is True
    assert [u["username"] for u in first["items"]] == ["alice", "bob"]  # type: ignore[attr-defined]
    second = await page(per_page=2, page=2, order_by="username")
    assert second["has_next"] is False
    assert [u["username"] for u in second["items"]] == ["carol", "zz_admin"]  # type: ignore[attr-defined]
    beyond = await page(per_page=2, page=9)
    assert beyond["items"] == []

    found = await page(search="ALICE", order_by="-username")
    assert [u["username"] for u in found["items"]] == ["carol", "alice"]  # type: ignore[attr-defined]
    assert (await page(search="%"))["total"] == 0  # LIKE wildcards are literal
    assert (await page(role="admin"))["total"] == 1
    assert (await page(is_active=False))["total"] == 0


async def test_admin_list_rejects_unknown_order(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.account(Role.ADMIN)
    for params in ({"order_by": "hashed_password"}, {"per_page": 101}, {"page": 0}):
        response = await client.get("/api/v1/users/", headers=admin.headers, params=params)
        assert_envelope(response, 422, "validation_error")


async def test_deactivate_and_reactivate(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.account(Role.ADMIN)
    user = await factory.account()
    assert (
        await client.delete(f"/api/v1/users/{user.id}", headers=admin.headers)
    ).status_code == 204
    login = await client.post(
        "/api/v1/auth/token", data={"username": user.username, "password": user.password}
    )
    assert_envelope(login, 403, "forbidden")
    back = await client.patch(
        f"/api/v1/users/{user.id}", headers=admin.headers, json={"is_active": True}
    )
    assert back.json()["is_active"] is True
    await factory.login(user.username)


async def test_role_rules(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.account(Role.ADMIN)
    superuser = await factory.account(Role.SUPERUSER)
    user = await factory.account()

    async def patch(actor: Account, target: int, **body: object) -> httpx.Response:
        return await client.patch(f"/api/v1/users/{target}", headers=actor.headers, json=body)

    denied = await patch(admin, user.id, role="admin")
    assert assert_envelope(denied, 403, "forbidden")["message"] == (
        "Missing permission: users:grant_privileged_roles"
    )
    assert (await patch(admin, superuser.id, is_active=False)).status_code == 403
    assert (await patch(superuser, superuser.id, role="user")).status_code == 403
    promoted = await patch(superuser, user.id, role="admin")
    assert promoted.json()["role"] == "admin"
    assert_envelope(await patch(admin, user.id, role="root"), 422, "validation_error")


async def test_hard_delete_is_superuser_only(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.account(Role.ADMIN)
    superuser = await factory.account(Role.SUPERUSER)
    user = await factory.account()
    await factory.item(user)
    denied = await client.delete(f"/api/v1/users/{user.id}?hard=true", headers=admin.headers)
    assert_envelope(denied, 403, "forbidden")
    done = await client.delete(f"/api/v1/users/{user.id}?hard=true", headers=superuser.headers)
    assert done.status_code == 204
    gone = await client.get(f"/api/v1/users/{user.id}", headers=superuser.headers)
    assert_envelope(gone, 404, "not_found")
    items = (await client.get("/api/v1/items/")).json()
    assert items["total"] == 0  # their items went with them
    self_delete = await client.delete(
        f"/api/v1/users/{superuser.id}?hard=true", headers=superuser.headers
    )
    assert_envelope(self_delete, 403, "forbidden")


@pytest.mark.parametrize("user_id", ["0", "-1", "abc", str(2**63), "1.5"])
async def test_bad_ids_are_422(client: httpx.AsyncClient, factory: Factory, user_id: str) -> None:
    account = await factory.account()
    response = await client.get(f"/api/v1/users/{user_id}", headers=account.headers)
    assert_envelope(response, 422, "validation_error")


@pytest.mark.parametrize("removal", ["hard_delete", "soft_delete", "deactivate"])
async def test_a_removed_users_cached_token_answers_401_at_once(
    client: httpx.AsyncClient, factory: Factory, removal: str
) -> None:
    """The token was used just before (its session's snapshot is cached): after the removal
    it is refused with 401 at once, never a 409 or 500 from a row that is gone."""
    superuser = await factory.account(Role.SUPERUSER)
    user = await factory.account()
    assert (await client.get("/api/v1/users/me", headers=user.headers)).status_code == 200
    if removal == "deactivate":
        done = await client.patch(
            f"/api/v1/users/{user.id}", json={"is_active": False}, headers=superuser.headers
        )
    else:
        hard = {"hard": "true"} if removal == "hard_delete" else {}
        done = await client.delete(
            f"/api/v1/users/{user.id}", params=hard, headers=superuser.headers
        )
    assert done.status_code in (200, 204), done.text
    assert_envelope(await client.get("/api/v1/users/me", headers=user.headers), 401, "unauthorized")
    created = await client.post(
        "/api/v1/items/", json={"title": "ghost", "price": "1.00"}, headers=user.headers
    )
    assert_envelope(created, 401, "unauthorized")


async def test_age_and_display_name(client: httpx.AsyncClient, factory: Factory) -> None:
    """display_name is the full name when set, else the username; age is private (1-150)."""
    account, other = await factory.account(), await factory.account()
    me = (await client.get("/api/v1/users/me", headers=account.headers)).json()
    assert (me["age"], me["display_name"]) == (None, account.username)
    patched = await client.patch(
        "/api/v1/users/me", headers=account.headers, json={"age": 150, "full_name": "Ada L"}
    )
    assert (patched.json()["age"], patched.json()["display_name"]) == (150, "Ada L")
    for age in (0, 151, "old"):
        refused = await client.patch("/api/v1/users/me", headers=account.headers, json={"age": age})
        assert_envelope(refused, 422, "validation_error")
    seen = (await client.get(f"/api/v1/users/{account.id}", headers=other.headers)).json()
    assert seen["display_name"] == "Ada L"
    assert "age" not in seen


async def test_profile_is_me_under_the_seeds_name(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    patched = await client.patch(
        "/api/v1/users/profile", headers=account.headers, json={"bio": "From profile", "age": 30}
    )
    assert patched.status_code == 200, patched.text
    profile = await client.get("/api/v1/users/profile", headers=account.headers)
    me = await client.get("/api/v1/users/me", headers=account.headers)
    assert profile.json() == me.json() == patched.json()
    assert (me.json()["bio"], me.json()["age"]) == ("From profile", 30)
    refused = await client.patch(
        "/api/v1/users/profile", headers=account.headers, json={"role": "admin"}
    )
    assert_envelope(refused, 422, "validation_error")
    assert_envelope(await client.get("/api/v1/users/profile"), 401, "unauthorized")


async def test_user_items_for_the_owner_and_admins_paged_in_fixed_queries(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner, stranger = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    ids = [(await factory.item(owner))["id"] for _ in range(5)]
    await factory.item(stranger)  # not the owner's: never listed
    gone = await client.delete(f"/api/v1/items/{ids.pop()}", headers=owner.headers)
    assert gone.status_code == 204  # soft-deleted: left out

    url = f"/api/v1/users/{owner.id}/items"
    first = (await client.get(url, params={"per_page": 3}, headers=owner.headers)).json()
    assert first["user"]["id"] == owner.id
    assert first["user"]["email"] == owner.email
    assert [i["id"] for i in first["items"]] == ids[:3]
    assert (first["total"], first["page"], first["has_next"], first["total_pages"]) == (
        4,
        1,
        True,
        2,
    )
    second = await client.get(url, params={"per_page": 3, "page": 2}, headers=admin.headers)
    assert [i["id"] for i in second.json()["items"]] == ids[3:]

    # The same statements whatever the page size: the user, its page of items, the count.
    costs = []
    for per_page in (1, 4):
        with counted_statements(app.state.services.engine) as statements:
            response = await client.get(url, params={"per_page": per_page}, headers=owner.headers)
        assert len(response.json()["items"]) == per_page
        costs.append((len(statements), len([s for s in statements if "FROM items" in s])))
    assert costs[0] == costs[1]
    assert costs[0][1] == 2

    assert_envelope(await client.get(url, headers=stranger.headers), 403, "forbidden")
    missing = await client.get("/api/v1/users/999999/items", headers=stranger.headers)
    assert_envelope(missing, 404, "not_found")
    assert_envelope(await client.get(url), 401, "unauthorized")


async def test_user_items_pages_are_bounded_by_the_setting(build_client: BuildClient) -> None:
    async with build_client(user_items_max_per_page=2) as (app, client):
        factory = Factory(client, app)
        owner = await factory.account()
        for _ in range(3):
            await factory.item(owner)
        page = await client.get(
            f"/api/v1/users/{owner.id}/items", params={"per_page": 100}, headers=owner.headers
        )
        assert (len(page.json()["items"]), page.json()["per_page"]) == (2, 2)
        assert page.json()["total"] == 3
