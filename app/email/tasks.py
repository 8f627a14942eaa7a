"""Email tasks (JOBS-2): send one outbox row, sweep the outbox. A campaign's mail reaches its
campaign through app.email.hooks; the campaign task itself is in app.campaigns.tasks."""

import logging
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.db import utcnow
from app.email import delivery, http_backend
from app.email import service as outbox
from app.email.delivery import Outgoing
from app.email.errors import ClaimLost, DeliveryError
from app.email.hooks import campaign_hooks, registered
from app.jobs.base import JobTask, job
from app.jobs.errors import JobError

logger = logging.getLogger("app.email")
SWEEP_BATCH = 1000


def backoff_seconds(attempt: int, *, factor: float, maximum: float) -> float:
    """Exponential backoff with jitter: the n-th retry waits between half and all of
    min(maximum, factor * 2**(n-1)), so retries spread out instead of arriving together."""
    ceiling = min(maximum, factor * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not for security


# -- one outbox row: claim, build, send, record -------------------------------------------------


def _deliver(task: JobTask, email_id: int) -> dict[str, Any]:
    """Shared by the plain send and the admin's test send."""
    claimed = _claim(task, email_id)
    if isinstance(claimed, outbox.Final):
        _after(task, claimed.campaign_id)
        return {"email_id": email_id, "status": str(claimed.status)}
    outgoing, message = _build(task, claimed)
    if not _send(task, claimed, outgoing, message):
        return {"email_id": email_id, "status": "taken_over"}
    template = outgoing.template
    task.in_session(
        lambda session: outbox.forget_context(session=session, email_id=email_id, template=template)
    )
    _after(task, claimed.campaign_id)
    return {"email_id": email_id, "status": "sent"}


def _claim(task: JobTask, email_id: int) -> outbox.Claimed | outbox.Final:
    lease_seconds = task.runtime.settings.email_lease_seconds
    claimed = task.in_session(
        lambda session: outbox.claim(
            session=session, email_id=email_id, lease_seconds=lease_seconds
        )
    )
    if isinstance(claimed, outbox.Busy):
        # Another sender is on it (this is a duplicate delivery); look again when its lease
        # ends, in case that sender died.
        wait = (claimed.lease_until - utcnow()).total_seconds()
        raise task.retry(countdown=max(1.0, wait + 1))
    return claimed


def _build(task: JobTask, claimed: outbox.Claimed) -> tuple[Outgoing, EmailMessage]:
    outgoing = claimed.outgoing
    campaign_id = claimed.campaign_id
    try:
        if campaign_id is not None:
            body_context = campaign_hooks().body_context
            context = task.in_session(
                lambda session: body_context(session=session, campaign_id=campaign_id)
            )
            outgoing = replace(outgoing, context=context)
        return outgoing, delivery.build_message(outgoing, task.runtime.settings)
    except Exception as exc:  # a template or header problem: retrying won't fix it
        _fail(task, claimed, f"could not build the message: {type(exc).__name__}")
        raise


def _send(
    task: JobTask, claimed: outbox.Claimed, outgoing: Outgoing, message: EmailMessage
) -> bool:
    """Send, marking the row sent while the claim is still ours. False: another sender took
    the claim over, and this one sent nothing."""
    settings = task.runtime.settings
    email_id, token = outgoing.email_id, claimed.claim

    def commit_sent(then: Callable[[bool], None] = lambda _ours: None) -> bool:
        async def step(session: AsyncSession) -> bool:
            still_ours = await outbox.mark_sent(session=session, email_id=email_id, token=token)
            then(still_ours)  # before the session closes: see delivery._transmit
            return still_ours

        return task.in_session(step)

    try:
        backend = settings.mail_backend
        if backend == "http":
            task.run_async(
                http_backend.post(
                    client=task.runtime.http, settings=settings, outgoing=outgoing, message=message
                )
            )
            # After the provider's 2xx: a kill before this commit re-posts with the same
            # Idempotency-Key (see app/email/http_backend.py).
            delivery.require_claim(commit_sent())
            logger.info("email %s handed to the mail API for %s", email_id, outgoing.recipient)
        elif backend == "file":
            path = delivery.write_outbox_file(settings.outbox_dir, email_id, message)
            delivery.require_claim(commit_sent())
            # Recipient and subject only: the body may hold a single-use link.
            logger.info(
                "email %s to %s (%r) written to %s", email_id, outgoing.recipient,
                outgoing.subject, path,
            )  # fmt: skip
        else:
            delivery.send_smtp(settings, outgoing, message, commit_sent)
            logger.info("email %s sent to %s", email_id, outgoing.recipient)
    except ClaimLost:
        logger.warning("email %s: claim lost to another sender; not sending", email_id)
        return False
    except DeliveryError as exc:
        _failed_attempt(task, claimed, exc)
    return True


def _failed_attempt(task: JobTask, claimed: outbox.Claimed, exc: DeliveryError) -> NoReturn:
    settings = task.runtime.settings
    email_id = claimed.outgoing.email_id
    if exc.permanent or claimed.attempts > settings.email_max_retries:
        _fail(task, claimed, str(exc))
        raise JobError(f"The mail could not be delivered: {exc}") from exc
    countdown = backoff_seconds(
        claimed.attempts,
        factor=settings.email_retry_backoff_seconds,
        maximum=settings.email_retry_backoff_max_seconds,
    )
    retry_at = utcnow() + timedelta(seconds=countdown)
    task.in_session(
        lambda session: outbox.release_for_retry(
            session=session,
            email_id=email_id,
            token=claimed.claim,
            error=str(exc),
            retry_at=retry_at,
        )
    )
    logger.warning(
        "email %s: attempt %d failed (%s); retrying in %.1fs", email_id, claimed.attempts, exc,
        countdown,
    )  # fmt: skip
    raise task.retry(countdown=countdown, exc=exc)


def _fail(task: JobTask, claimed: outbox.Claimed, error: str) -> None:
    outgoing = claimed.outgoing
    task.in_session(
        lambda session: outbox.mark_failed(
            session=session,
            email_id=outgoing.email_id,
            token=claimed.claim,
            error=error,
            template=outgoing.template,
        )
    )
    logger.error(
        "email %s to %s failed for good after %d attempt(s): %s",
        outgoing.email_id, outgoing.recipient, claimed.attempts, error,
    )  # fmt: skip
    _after(task, claimed.campaign_id)


def _after(task: JobTask, campaign_id: int | None) -> None:
    if campaign_id is not None:
        record_progress = campaign_hooks().record_progress
        task.in_session(lambda session: record_progress(session=session, campaign_id=campaign_id))


# Retries are decided from the row's attempt count (it survives crashes and duplicate
# deliveries), not Celery's per-message counter: max_retries=None leaves that to us.
@job("app.email.send", tracked=False, max_retries=None)
def send(task: JobTask, email_id: int) -> dict[str, Any]:
    """One outbox row: welcome, verification, reset and campaign mail."""
    return _deliver(task, email_id)


@job("app.email.send_test", title="Test email", max_retries=None)
def send_test(task: JobTask, email_id: int) -> dict[str, Any]:
    """The admin's test mail: the same delivery, with a task row the admin can watch."""
    return _deliver(task, email_id)


# -- the sweep ----------------------------------------------------------------------------------


@job("app.email.sweep_outbox", tracked=False)
def sweep_outbox(task: JobTask) -> dict[str, Any]:
    """Re-send mail an enqueue lost (crash between commit and broker) or a dead sender left
    claimed, and finish campaigns whose last event was lost. Duplicates are harmless: the
    claim lets one sender through."""
    runtime = task.runtime
    email_ids, running = task.in_session(lambda session: _sweep(session, runtime.settings))

    async def resend() -> None:
        for email_id in email_ids:
            await runtime.jobs.send(outbox.SEND_TASK, email_id)

    task.run_async(resend())
    if email_ids:
        logger.info("outbox sweep re-sent %d email(s)", len(email_ids))
    return {"resent": len(email_ids), "campaigns_checked": running}


async def _sweep(session: AsyncSession, settings: Settings) -> tuple[list[int], int]:
    """The rows to send again, after bringing every running campaign's counts up to date."""
    email_ids = await outbox.due_for_sweep(session=session, settings=settings, limit=SWEEP_BATCH)
    hooks = registered()
    running: list[int] = []
    if hooks is not None:  # none: this process knows no campaigns, so none is running
        running = await hooks.in_progress(session=session)
        for campaign_id in running:
            await hooks.record_progress(session=session, campaign_id=campaign_id)
    return email_ids, len(running)
