"""A real SMTP server for tests: aiosmtpd on a loopback port, STARTTLS with a certificate
made here (its own CA, trusted by the app through SMTP_CA_FILE) and AUTH LOGIN.

Recipients steer it: `reject...@` is refused with 550 at RCPT, `flaky...@` gets 451 at the end
of DATA every time, `flakyonce...@` only the first time, `slow...@` takes a moment to
answer the end of DATA (a slow mail server, so a test can kill a worker mid-campaign).
"""

import asyncio
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.certs import make_ca
from tests.support.processes import free_port

SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-secret-Pa55"
SLOW_SECONDS = 0.2


@dataclass
class Received:
    recipients: list[str]
    message: EmailMessage
    authenticated: bool
    tls: bool


@dataclass
class Sink:
    """The handler: records what arrives, thread-safe (the server runs on its own loop)."""

    received: list[Received] = field(default_factory=list)
    data_attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        recipient = envelope.rcpt_tos[0]
        with self.lock:
            self.data_attempts[recipient] += 1
            attempt = self.data_attempts[recipient]
        if recipient.startswith("flakyonce") and attempt == 1:
            return "451 4.3.0 Try again later"
        if recipient.startswith("flaky") and not recipient.startswith("flakyonce"):
            return "451 4.3.0 Try again later"
        assert isinstance(envelope.content, bytes)
        message = message_from_bytes(envelope.content, policy=default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.received.append(
                Received(
                    list(envelope.rcpt_tos),
                    message,
                    authenticated=bool(session.authenticated),
                    tls=session.ssl is not None,
                )
            )
        if recipient.startswith("slow"):
            # Like a real server, the message is kept once its final "." has arrived, and
            # the reply takes a moment (a queue written to disk): a sender killed meanwhile
            # never sees the 250, but the mail was delivered.
            await asyncio.sleep(SLOW_SECONDS)
        return "250 2.0.0 Accepted"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [item for item in self.received if address in item.recipients]

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


@dataclass
class SmtpServer:
    sink: Sink
    controller: Controller
    port: int
    ca_file: Path

    def settings(self) -> dict[str, str]:
        """What the app needs to send through this server, as environment values."""
        return {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.port),
            "SMTP_SECURITY": "starttls",
            "SMTP_USERNAME": SMTP_USER,
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "SMTP_CA_FILE": str(self.ca_file),
            "SMTP_TIMEOUT_SECONDS": "3",
        }


def start_smtp_server(directory: Path, *, tls: bool = True) -> SmtpServer:
    sink = Sink()
    port = free_port()
    authority = make_ca(directory, "Test mail CA")
    cert, key = authority.issue(
        directory, "server", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    ca = authority.path
    options: dict[str, Any] = {}
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        options = {
            "tls_context": context,
            "require_starttls": True,
            "authenticator": _authenticate,
            "auth_required": True,
            "auth_require_tls": True,
            "auth_exclude_mechanism": ["PLAIN"],  # so the client speaks AUTH LOGIN
        }
    # A fixed name: aiosmtpd otherwise resolves its FQDN (DNS) on every connection.
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, server_hostname="sink.test", **options
    )
    controller.start()
    return SmtpServer(sink, controller, port, ca)


def message_parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and the HTML part of a received message (both must be there)."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())
