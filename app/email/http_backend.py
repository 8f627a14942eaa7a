"""The second delivery backend (EMAIL_BACKEND=http): a transactional-mail HTTP API.

One JSON POST per mail, in the shape most providers accept (Resend's, close to Postmark's and
SendGrid's simplified ones): from, to, subject, text, html, attachments (base64), headers. The
API key goes out as a bearer token and never into a log line or an error text (a provider that
echoes it back has it cut out). The Message-ID, fixed when the outbox row was made, is also the
`Idempotency-Key`: a mail is recorded as sent only after the provider's 2xx, so a worker killed
between that answer and the commit posts the same mail again, and a provider that honours the
key sends it once.

Failures map onto the SMTP backend's retry rules (`DeliveryError.permanent`): timeouts,
connection errors, 408, 429 and 5xx are transient and retried with backoff; a refused key
(401, 403) is a configuration problem an operator can fix, retried like a refused SMTP login;
any other 4xx is the provider refusing this mail, permanent.
"""

import base64
from email.message import EmailMessage
from typing import Any

import httpx

from app.core.config import Settings
from app.email.delivery import Outgoing
from app.email.errors import DeliveryError

# Retried however often they come: the provider or the path to it is having a bad moment,
# or (401/403) the key is wrong until an operator fixes it.
TRANSIENT_STATUSES = frozenset({401, 403, 408, 409, 425, 429})
ERROR_TEXT_CHARS = 300


def payload(settings: Settings, outgoing: Outgoing, message: EmailMessage) -> dict[str, Any]:
    """The JSON body, from the message the outbox built (so both backends send the same
    parts and headers)."""
    body: dict[str, Any] = {
        "from": settings.email_from,
        "to": [outgoing.recipient],
        "subject": outgoing.subject,
    }
    for subtype, key in (("plain", "text"), ("html", "html")):
        part = message.get_body(preferencelist=(subtype,))
        if part is not None:
            body[key] = part.get_content()
    attachments = [
        {
            "filename": part.get_filename(),
            "content_type": part.get_content_type(),
            "content": base64.b64encode(_raw(part)).decode(),
        }
        for part in message.iter_attachments()
    ]
    if attachments:
        body["attachments"] = attachments
    body["headers"] = {"Message-ID": outgoing.message_id}
    return body


def _raw(part: EmailMessage) -> bytes:
    """The attachment's bytes as attached (a text part's content would come back decoded)."""
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw


def _redacted(text: str, secret: str | None) -> str:
    text = text[:ERROR_TEXT_CHARS].replace("\r", " ").replace("\n", " ")
    return text.replace(secret, "[redacted]") if secret else text


async def post(
    *, client: httpx.AsyncClient, settings: Settings, outgoing: Outgoing, message: EmailMessage
) -> None:
    """Hand one mail to the provider; returns once it answered 2xx, else DeliveryError."""
    assert settings.email_http_url is not None  # Settings refuses EMAIL_BACKEND=http without it
    key = settings.email_http_api_key.get_secret_value() if settings.email_http_api_key else None
    headers = {"Idempotency-Key": outgoing.message_id, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout = httpx.Timeout(settings.email_http_timeout_seconds)
    try:
        response = await client.post(
            settings.email_http_url,
            json=payload(settings, outgoing, message),
            headers=headers,
            timeout=timeout,
        )
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"mail API timed out ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        # The exception text names the URL at most, never the headers; redacted all the same.
        raise DeliveryError(
            f"mail API unreachable: {type(exc).__name__}: {_redacted(str(exc), key)}"
        ) from None
    if response.is_success:
        return
    status = response.status_code
    raise DeliveryError(
        f"mail API answered {status}: {_redacted(response.text, key)}",
        permanent=400 <= status < 500 and status not in TRANSIENT_STATUSES,
    )
