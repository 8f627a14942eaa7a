"""Free-form mail (issue 15, item 7) through the in-process app: who may mail whom, one
outbox row per recipient, and the limits (settings) in the error envelope. Delivery itself is
the outbox's (tests/email: SMTP and the HTTP API, on a real worker)."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import Role
from app.email import delivery
from app.email.delivery import Outgoing
from app.email.models import Email, EmailStatus
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import BuildClient

SEND = "/api/v1/email/send"
MAIL = {"subject": "Note to self", "text": "First line.\n\nSecond <b>paragraph</b>."}
# The same SQL on both databases: one backend is enough (PostgreSQL, as deployed).
ON_POSTGRES = pytest.mark.parametrize("backend", ["postgres"])


async def _rows(app: FastAPI, ids: list[int]) -> list[Email]:
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(select(Email).where(Email.id.in_(ids)).order_by(Email.id))
        return list(rows.scalars())


@ON_POSTGRES
async def test_a_user_mails_only_their_own_verified_address(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    user = await factory.account()
    unverified = await client.post(SEND, json=MAIL, headers=user.headers)
    assert_envelope(unverified, 409, "conflict")
    await factory.set_fields(user.id, is_verified=True)
    other = await client.post(
        SEND, json={**MAIL, "to": ["someone@example.com"]}, headers=user.headers
    )
    assert_envelope(other, 403, "forbidden")
    mixed = await client.post(
        SEND, json={**MAIL, "to": [user.email, "someone@example.com"]}, headers=user.headers
    )
    assert_envelope(mixed, 403, "forbidden")
    assert_envelope(await client.post(SEND, json=MAIL), 401, "unauthorized")

    own = await client.post(SEND, json=MAIL, headers=user.headers)
    named = await client.post(SEND, json={**MAIL, "to": [user.email.upper()]}, headers=user.headers)

    assert own.status_code == named.status_code == 202, own.text
    assert own.json()["recipients"] == named.json()["recipients"] == [user.email]
    [row] = await _rows(app, own.json()["email_ids"])
    assert (row.recipient, row.subject, row.template) == (user.email, "Note to self", "message")
    assert (row.status, row.user_id) == (EmailStatus.PENDING, user.id)
    # The body as the outbox sends it: text as paragraphs, escaped, when there is no HTML.
    context: dict[str, Any] = row.context or {}
    message = delivery.build_message(
        Outgoing(row.id, row.recipient, row.subject, row.message_id, row.template, context),
        app.state.services.settings,
    )
    html = message.get_body(preferencelist=("html",))
    assert html is not None
    assert "<p>Second &lt;b&gt;paragraph&lt;/b&gt;.</p>" in html.get_content()
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    assert "First line." in text.get_content()
    assert user.username in text.get_content()


@ON_POSTGRES
async def test_an_admin_mails_a_list_one_outbox_row_per_recipient(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    admin = await factory.account(Role.ADMIN)
    to = ["b@example.com", "a@example.com", "B@example.com", "c@example.com"]
    response = await client.post(
        SEND, json={**MAIL, "to": to, "html": "<h1>Hello</h1>"}, headers=admin.headers
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["recipients"] == ["b@example.com", "a@example.com", "c@example.com"]
    rows = await _rows(app, body["email_ids"])
    assert [row.recipient for row in rows] == body["recipients"]
    assert len({row.message_id for row in rows}) == 3  # three mails, not one with three To:
    assert all(row.context and row.context["body_html"] == "<h1>Hello</h1>" for row in rows)
    assert response.headers["X-RateLimit-Limit"] == "20"


@pytest.mark.parametrize("shared_state", ["memory"], indirect=True)
async def test_recipients_body_and_rate_are_bounded_by_settings(
    build_client: BuildClient,
) -> None:
    limits = {
        "email_send_max_recipients": 2,
        "email_send_max_body_chars": 20,
        "rate_limit_email_send_admin": "2/hour",
        "rate_limit_email_send": "1/hour",
    }
    async with build_client(**limits) as (app, client):
        factory = Factory(client, app)
        admin, user = await factory.account(Role.ADMIN), await factory.account()
        await factory.set_fields(user.id, is_verified=True)
        three = ["a@example.com", "b@example.com", "c@example.com"]
        short = {"subject": "Short", "text": "Twenty characters!!!"}  # at the limit

        too_many = await client.post(SEND, json={**short, "to": three}, headers=admin.headers)
        assert_envelope(too_many, 422, "validation_error")
        [detail] = too_many.json()["error"]["details"]
        assert detail["field"] == "body.to"
        assert "EMAIL_SEND_MAX_RECIPIENTS" in detail["message"]
        long = await client.post(SEND, json={**short, "text": "x" * 21}, headers=user.headers)
        assert_envelope(long, 422, "validation_error")
        assert long.json()["error"]["details"][0]["field"] == "body.text"

        # Duplicates count once; refusals above spent none of the budget.
        twice = {**short, "to": ["a@example.com", "A@example.com"]}
        for _ in range(2):
            assert (await client.post(SEND, json=twice, headers=admin.headers)).status_code == 202
        limited = await client.post(SEND, json=twice, headers=admin.headers)
        assert_envelope(limited, 429, "rate_limited")
        assert "Retry-After" in limited.headers

        assert (await client.post(SEND, json=short, headers=user.headers)).status_code == 202
        assert_envelope(
            await client.post(SEND, json=short, headers=user.headers), 429, "rate_limited"
        )
