"""Delivery without a worker: the outbox file, and SMTP refusals, against a real aiosmtpd."""

from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest

from app.core.config import Settings
from app.email import delivery
from app.email.errors import ClaimLost, DeliveryError
from tests.support.settings import make_settings
from tests.support.smtp import SmtpServer, start_smtp_server


def _claim_held(then: Callable[[bool], None]) -> bool:
    """A commit that finds the claim still ours, ending DATA as the task's commit does."""
    then(True)
    return True


def _claim_lost(then: Callable[[bool], None]) -> bool:
    then(False)
    return False


@pytest.fixture
def plain_smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = start_smtp_server(tmp_path, tls=False)
    try:
        yield server
    finally:
        server.controller.stop()


def _outgoing(settings: Settings, recipient: str = "bob@example.com") -> delivery.Outgoing:
    return delivery.Outgoing(
        email_id=7,
        recipient=recipient,
        subject="Reset your password",
        message_id=delivery.new_message_id(settings),
        template="reset",
        context={
            "name": "Bob",
            "link": "https://x.test/reset-password?token=t0k",
            "expires_minutes": 5,
        },
    )


def test_embedded_mode_writes_the_whole_message_to_the_outbox(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, email_from="App <noreply@app.test>")
    outgoing = _outgoing(settings)
    path = delivery.write_outbox_file(
        settings.outbox_dir, 7, delivery.build_message(outgoing, settings)
    )

    assert path == tmp_path / "outbox" / "7.eml"
    message = message_from_bytes(path.read_bytes(), policy=default)
    assert message["To"] == "bob@example.com"
    assert message["From"] == "App <noreply@app.test>"
    assert message["Subject"] == outgoing.subject
    assert message["Date"] is not None
    assert message["Message-ID"] == outgoing.message_id
    assert message["Message-ID"].endswith("@app.test>")
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert "token=t0k" in plain.get_content()
    assert "token=t0k" in html.get_content()
    assert list((tmp_path / "outbox").iterdir()) == [path]  # no temp file left


def test_starttls_is_required_when_configured(tmp_path: Path, plain_smtp: SmtpServer) -> None:
    settings = make_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=plain_smtp.port, smtp_security="starttls"
    )
    outgoing = _outgoing(settings)
    committed: list[bool] = []

    def commit(then: Callable[[bool], None]) -> bool:
        committed.append(True)
        then(True)
        return True

    with pytest.raises(DeliveryError, match="STARTTLS") as caught:
        delivery.send_smtp(settings, outgoing, delivery.build_message(outgoing, settings), commit)

    assert not caught.value.permanent
    assert committed == []  # nothing was marked sent
    assert plain_smtp.sink.count() == 0


def test_a_lost_claim_never_finishes_the_message(tmp_path: Path, plain_smtp: SmtpServer) -> None:
    settings = make_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=plain_smtp.port, smtp_security="none"
    )
    outgoing = _outgoing(settings)

    with pytest.raises(ClaimLost):
        delivery.send_smtp(
            settings, outgoing, delivery.build_message(outgoing, settings), _claim_lost
        )

    assert plain_smtp.sink.count() == 0  # the server dropped the unfinished DATA
    delivery.send_smtp(settings, outgoing, delivery.build_message(outgoing, settings), _claim_held)
    assert plain_smtp.sink.count() == 1


def test_a_refused_recipient_is_a_permanent_failure(tmp_path: Path, plain_smtp: SmtpServer) -> None:
    settings = make_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=plain_smtp.port, smtp_security="none"
    )
    outgoing = _outgoing(settings, "reject-me@example.com")
    with pytest.raises(DeliveryError, match="550") as caught:
        delivery.send_smtp(
            settings, outgoing, delivery.build_message(outgoing, settings), _claim_held
        )
    assert caught.value.permanent


def test_dots_at_line_starts_survive_the_trip(tmp_path: Path, plain_smtp: SmtpServer) -> None:
    settings = make_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=plain_smtp.port, smtp_security="none"
    )
    outgoing = delivery.Outgoing(
        email_id=8, recipient="dots@example.com", subject="Dots", message_id="<d@x>",
        template="campaign", context={"body_text": "line\n.\n..two", "body_html": None},
    )  # fmt: skip
    delivery.send_smtp(settings, outgoing, delivery.build_message(outgoing, settings), _claim_held)
    [received] = plain_smtp.sink.to("dots@example.com")
    plain = received.message.get_body(("plain",))
    assert plain is not None
    body = plain.get_content()
    assert body.startswith("line\r\n.\r\n..two\r\n")  # dot-stuffed on the wire, undone
