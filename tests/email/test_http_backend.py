"""The HTTP mail API backend (issue 15, item 7) against a local provider server the test
starts (tests/support/mail_api.py): it stands in for a third-party transactional-mail service,
which a test must not reach. First the backend on its own (payload, key, failures), then a real
worker delivering outbox rows through it, a transient failure retried to success included."""

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.core.config import Settings
from app.email import delivery, http_backend
from app.email.delivery import Outgoing
from app.email.errors import DeliveryError
from app.email.models import Email, EmailStatus
from tests.support.factories import Factory
from tests.support.mail_api import API_KEY, MailApiServer
from tests.support.settings import make_settings
from tests.support.waiting import eventually_async
from tests.support.workers import JobsStack

MAX_RETRIES = 2
DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def mail_api() -> Iterator[MailApiServer]:
    server = MailApiServer().start()
    try:
        yield server
    finally:
        server.stop()


def _settings(tmp_path: Path, server: MailApiServer, **overrides: object) -> Settings:
    values: dict[str, object] = {key.lower(): value for key, value in server.settings().items()}
    return make_settings(tmp_path, None, **{**values, **overrides})


def _outgoing(recipient: str, **context: object) -> Outgoing:
    return Outgoing(
        email_id=1,
        recipient=recipient,
        subject="Hello",
        message_id=f"<{recipient}.test@example.test>",
        template="message",
        context={"body_text": "Hi there", "body_html": None, "sent_by": "tester", **context},
    )


async def _post(settings: Settings, outgoing: Outgoing) -> None:
    message = delivery.build_message(outgoing, settings)
    async with httpx.AsyncClient() as client:
        await http_backend.post(
            client=client, settings=settings, outgoing=outgoing, message=message
        )


async def test_a_mail_is_one_json_post_with_the_key_and_its_message_id(
    tmp_path: Path, mail_api: MailApiServer
) -> None:
    settings = _settings(tmp_path, mail_api, email_from="App <noreply@app.example.test>")
    attached = delivery.attachment(filename="r.xlsx", content_type="text/csv", data=b"a,b\r\n")
    outgoing = _outgoing("one@example.com", attachments=[attached])

    await _post(settings, outgoing)

    [posted] = mail_api.api.to("one@example.com")
    assert posted.headers["authorization"] == f"Bearer {API_KEY}"
    assert posted.headers["idempotency-key"] == outgoing.message_id
    body = posted.body
    assert body["from"] == "App <noreply@app.example.test>"
    assert body["to"] == ["one@example.com"]
    assert body["subject"] == "Hello"
    assert "Hi there" in body["text"]
    assert "<p>Hi there</p>" in body["html"]
    assert body["headers"] == {"Message-ID": outgoing.message_id}
    assert body["attachments"] == [
        {"filename": "r.xlsx", "content_type": "text/csv", "content": "YSxiDQo="}
    ]
    # Posted again (a worker killed before its commit): the provider keeps one mail.
    await _post(settings, outgoing)
    assert len(mail_api.api.to("one@example.com")) == 1


async def test_failures_map_to_the_smtp_retry_rules_and_never_show_the_key(
    tmp_path: Path, mail_api: MailApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, mail_api, email_http_timeout_seconds=0.2)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(DeliveryError) as transient:
        await _post(settings, _outgoing("flaky-unit@example.com"))
    assert not transient.value.permanent
    assert "503" in str(transient.value)

    with pytest.raises(DeliveryError) as refused:
        await _post(settings, _outgoing("reject-unit@example.com"))
    assert refused.value.permanent
    assert "422" in str(refused.value)
    assert "[redacted]" in str(refused.value)  # the provider echoed the key back

    with pytest.raises(DeliveryError) as slow:
        await _post(settings, _outgoing("slow-unit@example.com"))
    assert not slow.value.permanent
    assert "timed out" in str(slow.value)

    wrong_key = _settings(tmp_path, mail_api, email_http_api_key="not-the-key")
    with pytest.raises(DeliveryError) as unauthorized:
        await _post(wrong_key, _outgoing("key-unit@example.com"))
    assert not unauthorized.value.permanent  # an operator fixes the key; mail then goes out
    assert "401" in str(unauthorized.value)

    unreachable = _settings(tmp_path, mail_api, email_http_url="http://127.0.0.1:9/emails")
    with pytest.raises(DeliveryError) as down:
        await _post(unreachable, _outgoing("down-unit@example.com"))
    assert not down.value.permanent

    for error in (transient, refused, slow, unauthorized, down):
        assert API_KEY not in str(error.value)
    assert API_KEY not in caplog.text


def test_the_http_backend_needs_its_url() -> None:
    with pytest.raises(ValueError, match="EMAIL_BACKEND=http needs EMAIL_HTTP_URL"):
        make_settings(Path("/nonexistent"), None, email_backend="http")
    with pytest.raises(ValueError, match="EMAIL_BACKEND=smtp needs SMTP_HOST"):
        make_settings(Path("/nonexistent"), None, email_backend="smtp")


# -- through a real worker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs_overrides(mail_api: MailApiServer) -> dict[str, str]:
    return {
        **mail_api.settings(),
        "EMAIL_MAX_RETRIES": str(MAX_RETRIES),
        "EMAIL_RETRY_BACKOFF_SECONDS": "0.2",
        "EMAIL_RETRY_BACKOFF_MAX_SECONDS": "1",
        "EMAIL_HTTP_TIMEOUT_SECONDS": "5",
    }


async def _rows(app: FastAPI, ids: list[int]) -> dict[str, Email]:
    sessionmaker: async_sessionmaker[AsyncSession] = app.state.services.sessionmaker
    async with sessionmaker() as session:
        rows = await session.execute(select(Email).where(Email.id.in_(ids)))
        return {row.recipient: row for row in rows.scalars()}


# The broker changes nothing here (the outbox and the backend are the point): Redis only.
@pytest.mark.parametrize("jobs_stack", ["redis"], indirect=True, scope="module")
async def test_a_worker_delivers_through_the_api_retrying_a_transient_failure(
    jobs_stack: JobsStack, mail_api: MailApiServer, jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient, jobs_factory: Factory,
) -> None:  # fmt: skip
    admin = await jobs_factory.account(Role.ADMIN)
    good, once, refused = "ok-w@example.com", "flakyonce-w@example.com", "reject-w@example.com"
    response = await jobs_client.post(
        "/api/v1/email/send",
        json={"to": [good, once, refused], "subject": "Ops notice", "text": "Maintenance."},
        headers=admin.headers,
    )
    assert response.status_code == 202, response.text
    ids = response.json()["email_ids"]

    async def final() -> dict[str, Email] | None:
        rows = await _rows(jobs_app, ids)
        done = all(row.status in (EmailStatus.SENT, EmailStatus.FAILED) for row in rows.values())
        return rows if done else None

    try:
        rows = await eventually_async(final, timeout=DEADLINE_SECONDS, what="three final mails")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{jobs_stack.worker.tail()}") from None

    assert (rows[good].status, rows[good].attempts) == (EmailStatus.SENT, 1)
    # 503 once: released for a retry, then delivered once, under the same Idempotency-Key.
    assert (rows[once].status, rows[once].attempts) == (EmailStatus.SENT, 2)
    assert mail_api.api.attempts[once] == 2
    assert len(mail_api.api.to(once)) == 1
    keys = {p.headers["idempotency-key"] for p in mail_api.api.posts if p.recipient == once}
    assert keys == {rows[once].message_id}
    # 422: the provider refuses this mail for good; not retried.
    assert (rows[refused].status, rows[refused].attempts) == (EmailStatus.FAILED, 1)
    error = rows[refused].last_error
    assert error is not None
    assert "422" in error
    assert API_KEY not in error
    assert mail_api.api.attempts[refused] == 1
    [posted] = mail_api.api.to(good)
    assert posted.body["subject"] == "Ops notice"
    assert "Maintenance." in posted.body["text"]
    assert API_KEY not in jobs_stack.worker.tail(400)
