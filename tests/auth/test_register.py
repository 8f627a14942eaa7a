import httpx
import pytest

from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Factory


def body(**overrides: str) -> dict[str, str]:
    return {
        "username": "new_user-1",
        "email": "New.User@Example.com",
        "password": DEFAULT_PASSWORD,
        "password_confirm": DEFAULT_PASSWORD,
        **overrides,
    }


async def test_register_returns_private_view(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/register", json=body(full_name="New User"))
    assert response.status_code == 201
    user = response.json()
    assert user["username"] == "new_user-1"
    assert user["email"] == "new.user@example.com"
    assert user["role"] == "user"
    assert user["is_active"] is True
    assert user["full_name"] == "New User"
    assert "password" not in response.text
    assert "hashed" not in response.text


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": "ab"}, "body.username"),
        ({"username": "has space"}, "body.username"),
        ({"username": "Admin"}, "body.username"),
        ({"username": "x" * 33}, "body.username"),
        ({"email": "nope"}, "body.email"),
        ({"password": "Short1", "password_confirm": "Short1"}, "body.password"),
        ({"password": "alllowercase1", "password_confirm": "alllowercase1"}, "body.password"),
        ({"password": "NoDigitsHere", "password_confirm": "NoDigitsHere"}, "body.password"),
        ({"password": "A1" + "x" * 127, "password_confirm": "A1" + "x" * 127}, "body.password"),
        ({"password_confirm": "Something-else1"}, "body.password_confirm"),
        ({"role": "admin"}, "body.role"),
    ],
)
async def test_register_rejects_bad_fields(
    client: httpx.AsyncClient, overrides: dict[str, str], field: str
) -> None:
    response = await client.post("/api/v1/auth/register", json=body(**overrides))
    error = assert_envelope(response, 422, "validation_error")
    assert field in {d["field"] for d in error["details"]}  # type: ignore[attr-defined]


async def test_taken_username_or_email_is_409(client: httpx.AsyncClient, factory: Factory) -> None:
    await factory.register("taken_name")
    same_name_other_case = await client.post(
        "/api/v1/auth/register", json=body(username="TAKEN_name", email="other@example.com")
    )
    error = assert_envelope(same_name_other_case, 409, "conflict")
    assert [d["field"] for d in error["details"]] == ["body.username"]  # type: ignore[attr-defined]

    same_email = await client.post(
        "/api/v1/auth/register", json=body(username="fresh", email="TAKEN_NAME@example.com")
    )
    error = assert_envelope(same_email, 409, "conflict")
    assert [d["field"] for d in error["details"]] == ["body.email"]  # type: ignore[attr-defined]
