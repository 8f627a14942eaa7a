from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.auth.models import Role, User
from app.auth.router import REGISTER_ACCEPTED
from app.email.delivery import Outgoing, render
from app.email.models import Email
from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Factory
from tests.support.settings import BuildClient

RATE_LIMIT_COUNTERS = {"x-ratelimit-remaining", "x-ratelimit-reset"}


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "username": "new_user-1",
        "email": "New.User@Example.com",
        "password": DEFAULT_PASSWORD,
        "password_confirm": DEFAULT_PASSWORD,
        **overrides,
    }


async def test_register_accepts_and_creates_the_account(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    response = await client.post("/api/v1/auth/register", json=body(full_name="New User", age=41))
    assert response.status_code == 202
    assert response.json() == {"detail": REGISTER_ACCEPTED}
    assert "password" not in response.text
    [user] = await _users_with(app, "new.user@example.com")
    assert (user.username, user.full_name, user.age) == ("new_user-1", "New User", 41)
    assert (user.role, user.is_active, user.is_verified) == (Role.USER, True, False)
    assert [(m.template, m.user_id) for m in await _mails_to(app, user.email)] == [
        ("welcome", user.id)
    ]


async def test_an_existing_email_answers_alike_and_mails_its_owner(
    client: httpx.AsyncClient, app: FastAPI, factory: Factory
) -> None:
    """Status, body and headers tell nothing; the owner hears of it; no second account."""
    owner = await factory.register("owner_1", full_name="Ada")
    new = await client.post(
        "/api/v1/auth/register", json=body(username="someone_new", email="fresh@example.com")
    )
    existing = await client.post(
        "/api/v1/auth/register",
        json=body(username="someone_else", email="OWNER_1@Example.com", full_name="Mallory"),
    )
    assert (existing.status_code, existing.json()) == (new.status_code, new.json())
    assert new.status_code == 202
    volatile = {"date", "x-request-id", "x-process-time"} | RATE_LIMIT_COUNTERS
    assert _stable_headers(existing, volatile) == _stable_headers(new, volatile)
    assert set(existing.headers) == set(new.headers)

    assert [u.id for u in await _users_with(app, "owner_1@example.com")] == [owner["id"]]
    assert await _users_named(app, "someone_else") == 0
    [welcome, notice] = await _mails_to(app, "owner_1@example.com")
    assert (welcome.template, notice.template) == ("welcome", "signup_attempt")
    assert notice.user_id == owner["id"]
    text, html = render(_outgoing(notice), app.state.services.settings)
    assert "owner_1" in text
    assert "Ada" in text
    assert "Mallory" not in text
    assert "No new account was made" in html


async def test_a_disabled_owner_gets_no_mail_and_the_same_answer(
    client: httpx.AsyncClient, app: FastAPI, factory: Factory
) -> None:
    owner = await factory.register("gone_1")
    await factory.set_fields(owner["id"], is_active=False)
    response = await client.post(
        "/api/v1/auth/register", json=body(username="other_1", email="gone_1@example.com")
    )
    assert (response.status_code, response.json()) == (202, {"detail": REGISTER_ACCEPTED})
    assert [m.template for m in await _mails_to(app, "gone_1@example.com")] == ["welcome"]


async def test_a_taken_username_is_409_whatever_the_email(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    """Usernames are public handles, so their 409 leaks nothing; it is decided before the
    email is looked at, so it reads the same for an existing address and a new one."""
    await factory.register("taken_name")
    answers = []
    for email in ("taken_name@example.com", "nobody-here@example.com"):
        response = await client.post(
            "/api/v1/auth/register", json=body(username="TAKEN_name", email=email)
        )
        error = assert_envelope(response, 409, "conflict")
        assert [d["field"] for d in error["details"]] == ["body.username"]  # type: ignore[attr-defined]
        answers.append({k: v for k, v in error.items() if k not in ("request_id", "timestamp")})
    assert answers[0] == answers[1]


async def test_mails_to_one_address_share_its_budget(build_client: BuildClient) -> None:
    """Sign-ups count against the per-mailbox budget of reset and verification mails (every
    spelling of the address), new address or not, so nobody floods an owner with notices."""
    async with build_client(rate_limit_password_reset="2/hour", rate_limit_register="50/hour") as (
        app,
        client,
    ):
        await Factory(client, app).register("flooded")  # the first mail: the welcome
        statuses = []
        for n, email in enumerate(["FLOODED@example.com", "flooded+x@example.com"]):
            response = await client.post(
                "/api/v1/auth/register", json=body(username=f"flood{n}", email=email)
            )
            statuses.append(response.status_code)
        assert statuses == [202, 429]
        assert [m.template for m in await _mails_to(app, "flooded@example.com")] == [
            "welcome",
            "signup_attempt",
        ]


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
        ({"age": 0}, "body.age"),
        ({"age": 151}, "body.age"),
    ],
)
async def test_register_rejects_bad_fields(
    client: httpx.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/auth/register", json=body(**overrides))
    error = assert_envelope(response, 422, "validation_error")
    assert field in {d["field"] for d in error["details"]}  # type: ignore[attr-defined]


async def _users_with(app: FastAPI, email: str) -> list[User]:
    async with app.state.services.sessionmaker() as session:
        return list((await session.scalars(select(User).where(User.email == email))).all())


async def _users_named(app: FastAPI, username: str) -> int:
    async with app.state.services.sessionmaker() as session:
        statement = select(func.count()).select_from(User).where(User.username == username)
        return int(await session.scalar(statement) or 0)


async def _mails_to(app: FastAPI, recipient: str) -> list[Email]:
    async with app.state.services.sessionmaker() as session:
        statement = select(Email).where(Email.recipient == recipient).order_by(Email.id)
        return list((await session.scalars(statement)).all())


def _outgoing(email: Email) -> Outgoing:
    return Outgoing(
        email_id=email.id,
        recipient=email.recipient,
        subject=email.subject,
        message_id=email.message_id,
        template=email.template,
        context=email.context or {},
    )


def _stable_headers(response: httpx.Response, volatile: set[str]) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in volatile}
