"""Email end to end (JOBS-2, AUTH-9): a real worker sends through a real SMTP server
(aiosmtpd, STARTTLS with a private CA, AUTH LOGIN), on the embedded and the Redis broker."""

import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.email.models import Email, EmailStatus
from tests.support.factories import Account, Factory
from tests.support.smtp import SmtpServer, message_parts
from tests.support.waiting import eventually_async
from tests.support.workers import JobsStack, wait_for_task

BASE_URL = "https://app.example.test"
MAIL_DEADLINE_SECONDS = 30.0
MAX_RETRIES = 2


@pytest.fixture(scope="module")
def jobs_overrides(smtp_server: SmtpServer) -> dict[str, str]:
    return {
        **smtp_server.settings(),
        "PUBLIC_BASE_URL": BASE_URL,
        "EMAIL_FROM": "App <noreply@app.example.test>",
        "EMAIL_MAX_RETRIES": str(MAX_RETRIES),
        "EMAIL_RETRY_BACKOFF_SECONDS": "0.2",
        "EMAIL_RETRY_BACKOFF_MAX_SECONDS": "1",
        # A sender's claim lapses quickly, and the sweep finds stuck rows soon.
        "EMAIL_LEASE_SECONDS": "3",
        "EMAIL_SWEEP_AFTER_SECONDS": "2",
        # No test here kills a worker (tests/campaigns does), so nothing needs a short
        # redelivery; a 4 s limit was the likeliest cause of one test mail ending FAILURE on
        # a loaded CI machine.
        "JOB_SOFT_TIME_LIMIT_SECONDS": "20",
        "JOB_TIME_LIMIT_SECONDS": "25",
        "CELERY_VISIBILITY_TIMEOUT_SECONDS": "30",
    }


async def _mail_to(
    server: SmtpServer, address: str, *, count: int = 1, stack: JobsStack | None = None
) -> list[EmailMessage]:
    try:
        await eventually_async(
            lambda: len(server.sink.to(address)) >= count,
            timeout=MAIL_DEADLINE_SECONDS,
            what=f"{count} mail(s) to {address}",
        )
    except AssertionError as exc:
        log = stack.worker.tail() if stack is not None else ""
        raise AssertionError(f"{exc}\n{log}") from None
    return [item.message for item in server.sink.to(address)]


def _token_from(message: EmailMessage, page: str) -> str:
    text, html = message_parts(message)
    links: list[str] = re.findall(rf"{re.escape(BASE_URL)}{page}\?token=[\w\-]+", text)
    assert len(links) == 1, text
    assert links[0] in html  # the same link in both parts
    token = parse_qs(urlsplit(links[0]).query)["token"][0]
    assert len(token) >= 40
    return token


async def test_welcome_mail_goes_out_over_starttls_with_bothmessage_parts(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_factory: Factory
) -> None:
    user = await jobs_factory.register(full_name="Ada <b>Lovelace</b>")

    [message] = await _mail_to(smtp_server, user["email"], stack=jobs_stack)

    [received] = smtp_server.sink.to(user["email"])
    assert received.tls
    assert received.authenticated
    assert message["From"] == "App <noreply@app.example.test>"
    assert message["To"] == user["email"]
    assert message["Subject"] == "Welcome to app"
    assert message["Date"] is not None
    assert re.fullmatch(r"<[^@>]+@app\.example\.test>", message["Message-ID"])
    assert message.get_content_type() == "multipart/alternative"
    text, html = message_parts(message)
    assert "Ada <b>Lovelace</b>" in text  # plain text is not escaped...
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in html  # ...HTML is
    assert user["username"] in text


async def test_verification_link_from_the_mail_verifies_once(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:  # fmt: skip
    account = await jobs_factory.account()
    response = await jobs_client.post("/api/v1/auth/verify/request", headers=account.headers)
    assert response.status_code == 202, response.text

    messages = await _mail_to(smtp_server, account.email, count=2, stack=jobs_stack)
    verify = next(m for m in messages if "Confirm" in m["Subject"])
    token = _token_from(verify, "/verify-email")

    page = await jobs_client.get(f"/verify-email?token={token}")
    assert page.status_code == 200
    assert "/api/v1/auth/verify" in page.text
    done = await jobs_client.post("/api/v1/auth/verify", json={"token": token})
    assert done.status_code == 200, done.text
    me = await jobs_client.get("/api/v1/users/me", headers=account.headers)
    assert me.json()["is_verified"] is True
    again = await jobs_client.post("/api/v1/auth/verify", json={"token": token})
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "invalid_token"


async def test_password_reset_by_mail_ends_every_session(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:  # fmt: skip
    account = await jobs_factory.account()
    response = await jobs_client.post(
        "/api/v1/auth/password-reset/request", json={"email": account.email.upper()}
    )
    assert response.status_code == 202

    messages = await _mail_to(smtp_server, account.email, count=2, stack=jobs_stack)
    reset = next(m for m in messages if "Reset" in m["Subject"])
    token = _token_from(reset, "/reset-password")
    new_password = "Brand-new-pass-9"
    done = await jobs_client.post(
        "/api/v1/auth/password-reset", json={"token": token, "new_password": new_password}
    )
    assert done.status_code == 204, done.text

    refresh = await jobs_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert refresh.status_code == 401
    assert (await jobs_client.get("/api/v1/users/me", headers=account.headers)).status_code == 401
    await jobs_factory.login(account.username, new_password)
    reused = await jobs_client.post(
        "/api/v1/auth/password-reset", json={"token": token, "new_password": "Other-pass-77"}
    )
    assert reused.status_code == 400


async def test_admin_test_mail_is_a_task_the_admin_can_watch(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:  # fmt: skip
    admin = await jobs_factory.account(Role.ADMIN)
    user = await jobs_factory.account()
    refused = await jobs_client.post("/api/v1/email/test", headers=user.headers)
    assert refused.status_code == 403

    unverified = await jobs_client.post("/api/v1/email/test", headers=admin.headers)
    assert unverified.status_code == 409, unverified.text  # never to an unproven address
    await jobs_factory.set_fields(admin.id, is_verified=True)
    own = await jobs_client.post("/api/v1/email/test", headers=admin.headers)
    other = await jobs_client.post(
        "/api/v1/email/test",
        json={"to": f"ops-{jobs_stack.broker}@example.com"},
        headers=admin.headers,
    )
    assert own.status_code == other.status_code == 202, own.text

    for accepted in (own.json(), other.json()):
        body = await wait_for_task(
            jobs_client, admin.headers, accepted["task_id"], stack=jobs_stack
        )
        assert body["state"] == "SUCCESS", (body, jobs_stack.worker.tail())
        assert body["result"]["status"] == "sent"
    [message] = [
        m for m in await _mail_to(smtp_server, admin.email, count=2) if "Test" in m["Subject"]
    ]
    assert admin.username in message_parts(message)[0]
    assert len(await _mail_to(smtp_server, f"ops-{jobs_stack.broker}@example.com")) == 1


async def _test_mail(client: httpx.AsyncClient, admin: Account, to: str) -> str:
    response = await client.post("/api/v1/email/test", json={"to": to}, headers=admin.headers)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def _outbox_row(app: FastAPI, recipient: str) -> Email:
    sessionmaker: async_sessionmaker[AsyncSession] = app.state.services.sessionmaker
    async with sessionmaker() as session:
        return (
            await session.execute(select(Email).where(Email.recipient == recipient))
        ).scalar_one()


async def test_transient_failures_are_retried_then_recorded_as_failed(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient, jobs_factory: Factory,
) -> None:  # fmt: skip
    admin = await jobs_factory.account(Role.ADMIN)
    tag = jobs_stack.broker
    flaky, once, refused = (
        f"{kind}-{tag}@example.com" for kind in ("flaky", "flakyonce", "reject")
    )
    tasks = [await _test_mail(jobs_client, admin, to) for to in (flaky, once, refused)]

    results = [
        await wait_for_task(jobs_client, admin.headers, task, stack=jobs_stack) for task in tasks
    ]

    # 451 every time: tried 1 + MAX_RETRIES times, then failed for good.
    assert results[0]["state"] == "FAILURE"
    assert "451" in results[0]["error"]
    assert smtp_server.sink.data_attempts[flaky] == 1 + MAX_RETRIES
    row = await _outbox_row(jobs_app, flaky)
    assert (row.status, row.attempts) == (EmailStatus.FAILED, 1 + MAX_RETRIES)
    assert row.last_error is not None
    assert "451" in row.last_error
    # 451 once: the retry delivers it, once.
    assert results[1]["state"] == "SUCCESS"
    assert smtp_server.sink.data_attempts[once] == 2
    assert len(smtp_server.sink.to(once)) == 1
    # 550: permanent, not retried.
    assert results[2]["state"] == "FAILURE"
    assert "550" in results[2]["error"]
    row = await _outbox_row(jobs_app, refused)
    assert (row.status, row.attempts) == (EmailStatus.FAILED, 1)


@pytest.fixture
def outbox_dir(jobs_stack: JobsStack) -> Path:
    return jobs_stack.settings.outbox_dir


async def test_smtp_mail_is_not_written_to_the_outbox_directory(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_factory: Factory, outbox_dir: Path
) -> None:
    user = await jobs_factory.register()
    await _mail_to(smtp_server, user["email"], stack=jobs_stack)
    assert not outbox_dir.exists() or not any(outbox_dir.iterdir())
