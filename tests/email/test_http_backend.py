"""The HTTP mail API backend (issue 15, item 7) against a local provider server the test
starts (tests/support/mail_api.py): it stands in for a third-party transactional-mail service,
which a test must not reach. Here the backend on its own (payload, key, failures); a real worker
delivering through it, a transient failure retried to one delivery included, is in
tests/reports/test_report_jobs.py (one worker for all of issue 15's job tests: CI time)."""

import logging
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.email import delivery, http_backend
from app.email.delivery import Outgoing
from app.email.errors import DeliveryError
from tests.support.mail_api import API_KEY, MailApiServer
from tests.support.settings import make_settings

MAX_RETRIES = 2
DEADLINE_SECONDS = 30.0


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
