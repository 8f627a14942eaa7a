"""A real SMTP server for tests: aiosmtpd on a loopback port, STARTTLS with a certificate
made here (its own CA, trusted by the app through SMTP_CA_FILE) and AUTH LOGIN.

Recipients steer it: `reject...@` is refused with 550 at RCPT, `flaky...@` gets 451 at the end
of DATA every time, `flakyonce...@` only the first time, `slow...@` takes a moment to
answer the end of DATA (a slow mail server, so a test can kill a worker mid-campaign).
"""

import asyncio
import datetime
import ipaddress
import socket
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Test mail CA"))
        .issuer_name(name("Test mail CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
    ca, cert, key = make_certificates(directory)
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
