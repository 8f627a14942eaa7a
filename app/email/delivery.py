"""From an outbox row to a delivered message: templates, MIME, SMTP or the outbox directory.

Sending over SMTP commits the row as sent *before* the end of DATA (see `send_smtp`), which is
what keeps a worker killed mid-send from mailing anyone twice.
"""

import base64
import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses, make_msgid
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app.core.config import Settings
from app.email.errors import ClaimLost, DeliveryError

logger = logging.getLogger("app.email")
# Records a mail as sent; calls its argument with "is the claim still ours" as soon as the
# commit returns, and returns the same answer.
CommitSent = Callable[[Callable[[bool], None]], bool]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
# Templates whose context is cleared from the row once it is final: a single-use link
# (verify, reset), or a report's figures and attached file (daily_report).
SENSITIVE_TEMPLATES = frozenset({"verify", "reset", "daily_report"})
# A context's files to attach: [{"filename", "content_type", "data" (base64)}].
ATTACHMENTS_KEY = "attachments"

_environment = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=select_autoescape(["html"]),  # the .txt parts are plain text: no escaping
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    email_id: int
    recipient: str
    subject: str
    message_id: str
    template: str
    context: dict[str, Any]


def new_message_id(settings: Settings) -> str:
    return make_msgid(domain=sender_domain(settings))


def sender_domain(settings: Settings) -> str:
    address = getaddresses([settings.email_from])[0][1]
    return address.rpartition("@")[2] or "localhost"


def render(outgoing: Outgoing, settings: Settings) -> tuple[str, str]:
    values = {
        "app_name": settings.app_name,
        "base_url": settings.public_base_url.rstrip("/"),
        "api_prefix": settings.api_v1_prefix,
        "subject": outgoing.subject,
        **outgoing.context,
    }
    text = _environment.get_template(f"{outgoing.template}.txt").render(values)
    html = _environment.get_template(f"{outgoing.template}.html").render(values)
    return text, html


def build_message(outgoing: Outgoing, settings: Settings) -> EmailMessage:
    """multipart/alternative: the plain text first, the HTML last (the preferred part)."""
    text, html = render(outgoing, settings)
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = settings.email_from
    message["To"] = Address(addr_spec=outgoing.recipient)
    message["Subject"] = outgoing.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = outgoing.message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    for attachment in outgoing.context.get(ATTACHMENTS_KEY) or ():
        maintype, _, subtype = attachment["content_type"].partition("/")
        message.add_attachment(
            base64.b64decode(attachment["data"]),
            maintype=maintype,
            subtype=subtype,
            filename=attachment["filename"],
        )
    return message


def attachment(*, filename: str, content_type: str, data: bytes) -> dict[str, str]:
    """One entry of a context's ATTACHMENTS_KEY list (JSON, so the bytes go as base64)."""
    encoded = base64.b64encode(data).decode()
    return {"filename": filename, "content_type": content_type, "data": encoded}


def envelope_sender(settings: Settings) -> str:
    return getaddresses([settings.email_from])[0][1]


def write_outbox_file(outbox_dir: Path, email_id: int, message: EmailMessage) -> Path:
    """Embedded mode: the whole message as `<id>.eml`, replaced atomically (a re-run rewrites
    the same file, so a crash can't leave two copies or half of one)."""
    outbox_dir.mkdir(parents=True, exist_ok=True)
    path = outbox_dir / f"{email_id}.eml"
    temporary = path.with_suffix(f".eml.{os.getpid()}.tmp")
    temporary.write_bytes(message.as_bytes())
    temporary.replace(path)
    return path


def _dot_stuffed(message: EmailMessage) -> bytes:
    """DATA payload without the final "." line: CRLF line ends, leading dots doubled."""
    data = message.as_bytes()  # the SMTP policy already writes CRLF line ends
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _check(code: int, reply: bytes, expected: tuple[int, ...], step: str) -> None:
    if code in expected:
        return
    text = f"{step}: {code} {reply.decode(errors='replace')}"
    raise DeliveryError(text, permanent=500 <= code < 600)


@cache
def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    # Loading the trust store costs ~20 ms; one context per process serves every connection.
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


@cache
def _local_hostname() -> str:
    # smtplib looks this up (socket.getfqdn: a DNS round trip) on every connection unless
    # told; once per process is enough, and it was most of a message's cost on a slow resolver.
    return socket.getfqdn()


def _connect(settings: Settings) -> smtplib.SMTP:
    assert settings.smtp_host is not None
    timeout = settings.smtp_timeout_seconds
    local = _local_hostname()
    context = _tls_context(settings.smtp_ca_file)
    smtp: smtplib.SMTP
    if settings.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, local, timeout=timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, local, timeout=timeout)
    try:
        # The end of DATA goes out as its own small write after the body (see send_smtp);
        # with Nagle's algorithm it would wait for the server's delayed ACK (~40 ms a mail).
        if smtp.sock is not None:
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        smtp.ehlo()
        if settings.smtp_security == "starttls":
            # Refuse to go on in clear text: a server (or a man in the middle) that drops
            # STARTTLS from its offer would otherwise receive the password and the mail.
            _require_starttls(smtp)
            smtp.starttls(context=context)
            smtp.ehlo()
        if settings.smtp_username:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_username, password)
    except BaseException:
        smtp.close()
        raise
    return smtp


def require_claim(still_ours: bool) -> None:
    if not still_ours:
        raise ClaimLost()


def _require_starttls(smtp: smtplib.SMTP) -> None:
    if not smtp.has_extn("starttls"):
        raise DeliveryError("the SMTP server does not offer STARTTLS")


def send_smtp(
    settings: Settings, outgoing: Outgoing, message: EmailMessage, commit_sent: CommitSent
) -> None:
    """Send one message; `commit_sent(then)` records it as sent, calls `then(still_ours)` the
    moment the commit returns, and says whether our claim held.

    A message is delivered when the server answers 250 to the "." that ends DATA, and a
    server that loses the connection before that "." discards the message. So the row is
    committed as sent after the whole body is written and *before* the "." goes out:

    * killed before the commit: the server never saw the ".", nothing was delivered, and
      the re-run (late ack) finds the row still claimable and sends it once;
    * killed after the commit: the row says sent and nobody sends it again; only a kill
      in the microseconds between the commit and one socket write loses that mail;
    * the server answers the "." with anything but 250: the caller puts the row back to
      pending (4xx: retried later) or failed (5xx).

    If the commit finds our claim gone (our lease ran out and another sender has the row),
    the connection is dropped without the ".", so the other sender's copy is the only one.
    """
    try:
        with _connect(settings) as smtp:
            _transmit(smtp, settings, outgoing, message, commit_sent)
    except (DeliveryError, ClaimLost):
        raise
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        raise DeliveryError(
            f"{exc.smtp_code} {text}",
            # A refused login is a configuration problem that an operator can fix: retry.
            permanent=500 <= exc.smtp_code < 600
            and not isinstance(exc, smtplib.SMTPAuthenticationError),
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc


def _transmit(
    smtp: smtplib.SMTP,
    settings: Settings,
    outgoing: Outgoing,
    message: EmailMessage,
    commit_sent: CommitSent,
) -> None:
    _check(*smtp.mail(envelope_sender(settings)), (250,), "MAIL FROM")
    _check(*smtp.rcpt(outgoing.recipient), (250, 251), "RCPT TO")
    smtp.putcmd("data")
    _check(*smtp.getreply(), (354,), "DATA")
    smtp.send(_dot_stuffed(message))

    def end_data(still_ours: bool) -> None:
        if still_ours:
            smtp.send(b".\r\n")

    # The "." goes out from inside the commit's step, right after the COMMIT returns, before
    # the session closes (a pool reset round trip) and the loop hands back: under load those
    # took milliseconds, long enough for a kill to land between them and lose the mail.
    still_ours = commit_sent(end_data)
    if not still_ours:
        smtp.close()  # no ".": the server throws the partial message away
    require_claim(still_ours)
    _check(*smtp.getreply(), (250,), "end of DATA")
