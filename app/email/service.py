"""The outbox: mail is a row first, written with the change that calls for it, then sent.

A sender claims a row with one conditional UPDATE (pending, or sending with a lapsed lease),
so of two deliveries of the same task (late ack after a crash, the sweep, a retry) one sends
and the other finds nothing to do. Every later write names the claim, so a sender whose
lease ran out can no longer change the row.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.db import utcnow
from app.email.delivery import SENSITIVE_TEMPLATES, Outgoing, new_message_id
from app.email.models import Email, EmailStatus
from app.jobs.service import Jobs

logger = logging.getLogger("app.email")
SEND_TASK = "app.email.send"


def queue(
    *,
    session: AsyncSession,
    settings: Settings,
    recipient: str,
    subject: str,
    template: str,
    context: dict[str, Any],
    user_id: int | None = None,
    message_id: str | None = None,
) -> Email:
    """Add a mail to the session; it exists once the caller commits. Then `dispatch` it.
    A caller that may run twice passes a `message_id` of its own, to find its rows again."""
    email = Email(
        recipient=recipient,
        subject=subject,
        template=template,
        context=context,
        user_id=user_id,
        message_id=message_id or new_message_id(settings),
        status=EmailStatus.PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(email)
    return email


async def dispatch(*, jobs: Jobs, email_ids: list[int]) -> None:
    """Send the tasks for committed rows. A broker failure is logged, not raised: the rows
    are safe in the database and the sweep sends them later."""
    for email_id in email_ids:
        try:
            await jobs.send(SEND_TASK, email_id)
        except Exception:
            logger.exception("could not queue email %s; the outbox sweep will send it", email_id)
            return


@dataclass(frozen=True, slots=True)
class Claimed:
    outgoing: Outgoing
    claim: str
    attempts: int
    campaign_id: int | None


@dataclass(frozen=True, slots=True)
class Busy:
    """Another sender holds a live claim until `lease_until`."""

    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Final:
    status: EmailStatus
    campaign_id: int | None


async def claim(
    *, session: AsyncSession, email_id: int, lease_seconds: int
) -> Claimed | Busy | Final:
    now = utcnow()
    token = uuid.uuid4().hex
    result = await session.execute(
        update(Email)
        .where(
            Email.id == email_id,
            (Email.status == EmailStatus.PENDING)
            | ((Email.status == EmailStatus.SENDING) & (Email.lease_until < now)),
        )
        .values(
            status=EmailStatus.SENDING,
            claim=token,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=Email.attempts + 1,
        )
    )
    await session.commit()
    email = await session.get(Email, email_id, populate_existing=True)
    if email is None:
        return Final(EmailStatus.CANCELLED, None)  # deleted with its campaign
    if result.rowcount != 1 or email.claim != token:  # type: ignore[attr-defined]
        if email.status == EmailStatus.SENDING and email.lease_until is not None:
            return Busy(email.lease_until)
        return Final(email.status, email.campaign_id)
    outgoing = Outgoing(
        email_id=email.id,
        recipient=email.recipient,
        subject=email.subject,
        message_id=email.message_id,
        template=email.template,
        context=email.context or {},
    )
    return Claimed(outgoing, token, email.attempts, email.campaign_id)


def _claimed(email_id: int, token: str, *statuses: EmailStatus) -> Any:
    return (Email.id == email_id) & (Email.claim == token) & Email.status.in_(statuses)


async def mark_sent(*, session: AsyncSession, email_id: int, token: str) -> bool:
    """Commit "sent" while the message is still unfinished on the wire; False: claim lost."""
    result = await session.execute(
        update(Email)
        .where(_claimed(email_id, token, EmailStatus.SENDING))
        .values(status=EmailStatus.SENT, sent_at=utcnow(), lease_until=None, last_error=None)
    )
    await session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def forget_context(*, session: AsyncSession, email_id: int, template: str) -> None:
    """Once a mail is final, the single-use link it carried is not kept in the database."""
    if template in SENSITIVE_TEMPLATES:
        await session.execute(update(Email).where(Email.id == email_id).values(context=None))
        await session.commit()


async def release_for_retry(
    *, session: AsyncSession, email_id: int, token: str, error: str, retry_at: datetime
) -> None:
    """Back to pending after a transient failure (also undoing an early "sent")."""
    await session.execute(
        update(Email)
        .where(_claimed(email_id, token, EmailStatus.SENDING, EmailStatus.SENT))
        .values(
            status=EmailStatus.PENDING,
            claim=None,
            lease_until=None,
            sent_at=None,
            last_error=error[:2000],
            next_attempt_at=retry_at,
        )
    )
    await session.commit()


async def mark_failed(
    *, session: AsyncSession, email_id: int, token: str, error: str, template: str
) -> None:
    values: dict[str, Any] = {
        "status": EmailStatus.FAILED,
        "lease_until": None,
        "sent_at": None,
        "last_error": error[:2000],
    }
    if template in SENSITIVE_TEMPLATES:
        values["context"] = None
    await session.execute(
        update(Email)
        .where(_claimed(email_id, token, EmailStatus.SENDING, EmailStatus.SENT))
        .values(**values)
    )
    await session.commit()


async def due_for_sweep(*, session: AsyncSession, settings: Settings, limit: int) -> list[int]:
    """Rows a lost message or a dead sender left behind: pending well past their due time,
    or claimed by a sender whose lease has run out."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.email_sweep_after_seconds)
    rows = await session.execute(
        select(Email.id)
        .where(
            ((Email.status == EmailStatus.PENDING) & (Email.next_attempt_at < stale))
            | ((Email.status == EmailStatus.SENDING) & (Email.lease_until < now))
        )
        .order_by(Email.id)
        .limit(limit)
    )
    return list(rows.scalars().all())
