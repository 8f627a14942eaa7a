"""Per-user permission grants (/api/v1/admin/users/{id}/permissions) and RequirePermissions."""

from pathlib import Path

import httpx
import pytest

from app.auth.models import Role
from app.auth.permissions import ROLE_PERMISSIONS, Permission, effective_permissions
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import asgi_client, make_settings, started_app
from tests.support.waiting import eventually_async

ARTICLE = {"title": "Granted words", "body": "text"}


def test_effective_permissions_are_the_roles_plus_known_grants() -> None:
    for role, permissions in ROLE_PERMISSIONS.items():
        effective = effective_permissions(role, ())
        assert effective == {str(p) for p in permissions}
        assert all(type(name) is str for name in effective)  # as the snapshot's grants come
    granted = effective_permissions(Role.USER, [str(Permission.POSTS_MODERATE), "retired:perm"])
    assert granted == {str(Permission.POSTS_MODERATE)}  # a grant this version lacks: ignored
    assert effective_permissions(Role.EDITOR, [str(Permission.MANAGE_USERS)]) == {
        str(Permission.ARTICLES_WRITE),
        str(Permission.MANAGE_USERS),
    }


def _grants_path(user_id: int) -> str:
    return f"/api/v1/admin/users/{user_id}/permissions"


async def test_an_admin_grants_and_revokes_and_it_applies_at_once(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.account(Role.ADMIN)
    user = await factory.account()
    # The user's snapshot is cached by this request: the grant must replace it.
    denied = await client.post("/api/v1/articles/", json=ARTICLE, headers=user.headers)
    error = assert_envelope(denied, 403, "forbidden")
    assert error["message"] == "Missing permission: articles:write"
    assert error["details"] == [
        {"field": None, "message": "articles:write", "type": "missing_permission"}
    ]

    before = (await client.get(_grants_path(user.id), headers=admin.headers)).json()
    assert before == {
        "user_id": user.id, "role": "user", "role_permissions": [], "grants": [], "effective": []
    }  # fmt: skip
    granted = await client.post(
        _grants_path(user.id), json={"permission": "articles:write"}, headers=admin.headers
    )
    assert granted.status_code == 200, granted.text
    body = granted.json()
    assert body["effective"] == ["articles:write"]
    assert [(g["permission"], g["granted_by"]) for g in body["grants"]] == [
        ("articles:write", admin.id)
    ]
    again = await client.post(
        _grants_path(user.id), json={"permission": "articles:write"}, headers=admin.headers
    )
    assert again.json()["grants"] == body["grants"]  # idempotent: first date and granter kept

    created = await client.post("/api/v1/articles/", json=ARTICLE, headers=user.headers)
    assert created.status_code == 201, created.text

    revoked = await client.delete(
        _grants_path(user.id), params={"permission": "articles:write"}, headers=admin.headers
    )
    assert revoked.json()["effective"] == []
    again_denied = await client.post("/api/v1/articles/", json=ARTICLE, headers=user.headers)
    assert_envelope(again_denied, 403, "forbidden")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_grant_rules(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.account(Role.ADMIN)
    user = await factory.account()
    editor = await factory.account(Role.EDITOR)
    unknown = await client.get(_grants_path(999_999), headers=admin.headers)
    assert_envelope(unknown, 404, "not_found")
    bad = await client.post(
        _grants_path(user.id), json={"permission": "articles:all"}, headers=admin.headers
    )
    assert_envelope(bad, 422, "validation_error")
    # Only what the admin holds: no admin hands out (or takes) a superuser's powers.
    unheld = await client.post(
        _grants_path(user.id), json={"permission": "users:hard_delete"}, headers=admin.headers
    )
    assert_envelope(unheld, 403, "forbidden")
    # Managing grants is itself a permission (users:manage), which users lack.
    not_admin = await client.get(_grants_path(user.id), headers=user.headers)
    assert assert_envelope(not_admin, 403, "forbidden")["message"] == (
        "Missing permission: users:manage"
    )
    anonymous = await client.get(_grants_path(user.id))
    assert_envelope(anonymous, 401, "unauthorized")
    # The editor role writes articles but may not delete them unless granted.
    shown = (await client.get(_grants_path(editor.id), headers=admin.headers)).json()
    assert shown["role_permissions"] == ["articles:write"]
    article = await client.post("/api/v1/articles/", json=ARTICLE, headers=editor.headers)
    assert article.status_code == 201
    path = f"/api/v1/articles/{article.json()['id']}"
    assert_envelope(await client.delete(path, headers=editor.headers), 403, "forbidden")
    await client.post(
        _grants_path(editor.id), json={"permission": "articles:delete"}, headers=admin.headers
    )
    assert (await client.delete(path, headers=editor.headers)).status_code == 204


async def test_a_grant_reaches_another_api_process_within_a_second(
    tmp_path: Path, redis_url: str, sqlite_template: Path
) -> None:
    """Two API processes share the database and Redis; process B has the user's snapshot
    cached, and a slow reader on B stores a pre-grant snapshot again just after A's grant."""
    (tmp_path / "app.db").write_bytes(sqlite_template.read_bytes())
    settings = make_settings(tmp_path, None, redis_url=redis_url)
    async with (
        started_app(settings) as app_a,
        started_app(settings) as app_b,
        asgi_client(app_a) as a,
        asgi_client(app_b) as b,
    ):
        admin = await Factory(a, app_a).account(Role.ADMIN)
        user = await Factory(a, app_a).account()
        denied = await b.post("/api/v1/articles/", json=ARTICLE, headers=user.headers)
        assert denied.status_code == 403
        services = app_b.state.services
        cache = services.cache
        sid = services.token_verifier.decode(user.access_token).session_id
        stale = {f"auth:session:{sid}": await cache.get(f"auth:session:{sid}")}

        granted = await a.post(
            _grants_path(user.id), json={"permission": "articles:write"}, headers=admin.headers
        )
        assert granted.status_code == 200
        for key, value in stale.items():  # the slow reader's late write
            assert value is not None
            await cache.set(key, value, ttl=60, only_if_new=True)

        async def allowed() -> bool:
            probe = await b.post("/api/v1/articles/", json=ARTICLE, headers=user.headers)
            return probe.status_code == 201

        # From the grant's answer: the late stale snapshot is dropped within REFORGET_SECONDS.
        await eventually_async(allowed, timeout=1.0, what="the grant on process B")
