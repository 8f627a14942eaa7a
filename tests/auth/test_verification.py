"""AUTH-9 without a worker: the mail's row holds the link, so the token is read from there."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from app.auth.models import ActionToken
from app.core.db import utcnow
from app.email.models import Email
from tests.support.factories import Factory
from tests.support.settings import BuildClient


async def _last_link(app: FastAPI, recipient: str, template: str) -> str:
    async with app.state.services.sessionmaker() as session:
        email = (
            await session.execute(
                select(Email)
                .where(Email.recipient == recipient, Email.template == template)
                .order_by(Email.id.desc())
                .limit(1)
            )
        ).scalar_one()
    assert email.context is not None
    link: str = email.context["link"]
    return parse_qs(urlsplit(link).query)["token"][0]


async def test_registration_queues_a_welcome_mail(app: FastAPI, factory: Factory) -> None:
    user = await factory.register()
    async with app.state.services.sessionmaker() as session:
        email = (
            await session.execute(select(Email).where(Email.user_id == user["id"]))
        ).scalar_one()
    assert (email.template, email.recipient, email.status) == ("welcome", user["email"], "pending")


async def test_a_newer_verification_link_replaces_the_older_one(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    for _ in range(2):
        response = await client.post("/api/v1/auth/verify/request", headers=account.headers)
        assert response.status_code == 202
        if _ == 0:
            older = await _last_link(app, account.email, "verify")
    newer = await _last_link(app, account.email, "verify")

    stale = await client.post("/api/v1/auth/verify", json={"token": older})
    assert stale.status_code == 400
    assert (await client.post("/api/v1/auth/verify", json={"token": newer})).status_code == 200
    again = await client.post("/api/v1/auth/verify/request", headers=account.headers)
    assert again.status_code == 409  # already verified


async def test_an_expired_reset_token_is_refused(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    response = await client.post(
        "/api/v1/auth/password-reset/request", json={"email": account.email}
    )
    assert response.status_code == 202
    token = await _last_link(app, account.email, "reset")
    async with app.state.services.sessionmaker() as session:
        await session.execute(
            update(ActionToken).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()

    expired = await client.post(
        "/api/v1/auth/password-reset", json={"token": token, "new_password": "Another-pass-1"}
    )
    assert expired.status_code == 400
    assert expired.json()["error"]["code"] == "invalid_token"
    await factory.login(account.username)  # the password is unchanged


async def test_reset_request_answers_the_same_for_unknown_addresses(
    app: FastAPI, client: httpx.AsyncClient, factory: Factory
) -> None:
    account = await factory.account()
    known = await client.post("/api/v1/auth/password-reset/request", json={"email": account.email})
    unknown = await client.post(
        "/api/v1/auth/password-reset/request", json={"email": "nobody-here@example.com"}
    )
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    async with app.state.services.sessionmaker() as session:
        templates = (
            (await session.execute(select(Email.recipient).where(Email.template == "reset")))
            .scalars()
            .all()
        )
    assert templates == [account.email]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/verify", {"token": ""}),
        ("/api/v1/auth/password-reset", {"token": "x", "new_password": "weak"}),
        ("/api/v1/auth/password-reset/request", {"email": "not an address"}),
    ],
)
async def test_bad_input_is_a_422(
    client: httpx.AsyncClient, path: str, body: dict[str, str]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_reset_requests_are_rate_limited_per_address(build_client: BuildClient) -> None:
    async with build_client(rate_limit_password_reset="2/hour") as (_, client):
        answers = [
            (await client.post(
                "/api/v1/auth/password-reset/request", json={"email": "target@example.com"}
            )).status_code
            for _ in range(3)
        ]  # fmt: skip
    assert answers == [202, 202, 429]


async def test_link_pages_post_the_token_and_forbid_other_scripts(
    client: httpx.AsyncClient,
) -> None:
    for path, api in (("/verify-email", "/api/v1/auth/verify"),
                      ("/reset-password", "/api/v1/auth/password-reset")):  # fmt: skip
        page = await client.get(f"{path}?token=abc")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert f'data-api="{api}"' in page.text
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
