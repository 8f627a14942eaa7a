"""Who admin mail may reach: verified addresses only, and no inbox flooded through an admin."""

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import Role
from app.campaigns import service
from app.email.models import Email
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import BuildClient


async def test_a_campaign_skips_unverified_addresses_even_when_named(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    admin = await factory.account(Role.ADMIN)
    verified, unverified = await factory.account(), await factory.account()
    await factory.set_fields(verified.id, is_verified=True)
    services = app.state.services
    async with services.sessionmaker() as session:
        campaign = service.create(
            session=session,
            created_by=admin.id,
            subject="News",
            body_text="Hello",
            body_html=None,
            user_ids=[verified.id, unverified.id],
        )
        await session.commit()
        await service.list_recipients(
            session=session, settings=services.settings, campaign=campaign, job_id=None
        )
        recipients = await session.execute(
            select(Email.recipient).where(Email.campaign_id == campaign.id)
        )
        assert list(recipients.scalars()) == [verified.email]


async def test_test_mail_is_limited_per_admin_and_per_target_mailbox(
    build_client: BuildClient,
) -> None:
    limits = {"rate_limit_test_email": "4/hour", "rate_limit_password_reset": "2/hour"}
    async with build_client(**limits) as (app, client):
        factory = Factory(client, app)
        admin = await factory.account(Role.ADMIN)

        async def send(to: str) -> httpx.Response:
            return await client.post("/api/v1/email/test", json={"to": to}, headers=admin.headers)

        # Two spellings of one mailbox share its budget of 2...
        assert (await send("Ops@Example.com")).status_code == 202
        assert (await send("ops+test@example.com")).status_code == 202
        assert_envelope(await send("OPS@example.com"), 429, "rate_limited")
        # ...and the admin's own budget of 4 (the refused one counted) ends the fifth.
        assert (await send("other@example.com")).status_code == 202
        refused = await send("third@example.com")
        assert_envelope(refused, 429, "rate_limited")
        assert "retry-after" in refused.headers
