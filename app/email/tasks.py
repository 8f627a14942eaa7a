"""Email tasks (JOBS-2, JOBS-3): send one outbox row, sweep the outbox, run a campaign."""

import logging
import random
from dataclasses import replace
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.db import utcnow
from app.email import campaigns, delivery
from app.email import service as outbox
from app.email.delivery import ClaimLost, DeliveryError, Outgoing
from app.jobs.base import JobTask, job
from app.jobs.errors import Cancelled, JobError

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
    task.in_session(lambda session: outbox.forget_context(session, email_id, template))
    _after(task, claimed.campaign_id)
    return {"email_id": email_id, "status": "sent"}


def _claim(task: JobTask, email_id: int) -> outbox.Claimed | outbox.Final:
    lease_seconds = task.runtime.settings.email_lease_seconds
    claimed = task.in_session(lambda session: outbox.claim(session, email_id, lease_seconds))
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
            context = task.in_session(lambda session: campaigns.body_context(session, campaign_id))
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

    def commit_sent() -> bool:
        return task.in_session(lambda session: outbox.mark_sent(session, email_id, token))

    try:
        if settings.smtp_host is None:
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
            session, email_id, claimed.claim, str(exc), retry_at
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
            session, outgoing.email_id, claimed.claim, error, outgoing.template
        )
    )
    logger.error(
        "email %s to %s failed for good after %d attempt(s): %s",
        outgoing.email_id, outgoing.recipient, claimed.attempts, error,
    )  # fmt: skip
    _after(task, claimed.campaign_id)


def _after(task: JobTask, campaign_id: int | None) -> None:
    if campaign_id is not None:
        task.in_session(lambda session: campaigns.record_progress(session, campaign_id))


# Retries are decided from the row's attempt count (it survives crashes and duplicate
# deliveries), not Celery's per-message counter: max_retries=None leaves that to us.
@job("app.email.send", tracked=False, max_retries=None)
def send(task: JobTask, email_id: int) -> dict[str, Any]:
    """One outbox row: welcome, verification, reset and campaign mail."""
    return _deliver(task, email_id)


@job("app.email.send_test", max_retries=None)
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
    email_ids = await outbox.due_for_sweep(session, settings, limit=SWEEP_BATCH)
    running = await campaigns.campaigns_in_progress(session)
    for campaign_id in running:
        await campaigns.record_progress(session, campaign_id)
    return email_ids, len(running)


# -- campaigns ----------------------------------------------------------------------------------


class CampaignTask(JobTask):
    """Its job stays in PROGRESS after the task body: the campaign is done when its last
    mail is, and the send task that sees that marks the job finished (`record_progress`).
    Only a re-run of a campaign already over finishes its job here."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if not (isinstance(retval, dict) and retval.get("complete")):
            return
        campaign_id: int = retval["campaign_id"]
        final = self.in_session(lambda session: _final_counts(session, campaign_id))
        super().on_success(final, task_id, args, kwargs)


async def _final_counts(session: AsyncSession, campaign_id: int) -> dict[str, Any]:
    campaign = await campaigns.get(session, campaign_id)
    numbers = await campaigns.counts(session, campaign)
    return {"campaign_id": campaign.id, "total": numbers.total,
            "sent": numbers.sent, "failed": numbers.failed}  # fmt: skip


@job("app.campaigns.run", base=CampaignTask)
def run_campaign(task: JobTask, campaign_id: int) -> dict[str, Any]:
    """List the recipients (once, idempotently), then one send task per pending row."""
    runtime = task.runtime
    job_id = task.request.id
    pending, numbers = task.in_session(
        lambda session: _list_recipients(session, runtime.settings, campaign_id, job_id)
    )
    if numbers is None:  # a re-run of a campaign already finished (or cancelled)
        return {"campaign_id": campaign_id, "complete": True}
    try:
        task.progress(numbers.done, numbers.total, f"{numbers.sent} sent, {numbers.failed} failed")
    except Cancelled:
        task.in_session(lambda session: _cancel(session, campaign_id))
        raise
    for email_id in pending:
        runtime.celery.send_task(outbox.SEND_TASK, args=[email_id])
    return {"campaign_id": campaign_id, "queued": len(pending), "complete": False}


async def _list_recipients(
    session: AsyncSession, settings: Settings, campaign_id: int, job_id: str
) -> tuple[list[int], campaigns.Counts | None]:
    campaign = await campaigns.get(session, campaign_id)
    pending = await campaigns.list_recipients(session, settings, campaign, job_id)
    return pending, await campaigns.record_progress(session, campaign_id)


async def _cancel(session: AsyncSession, campaign_id: int) -> None:
    await campaigns.cancel(session, await campaigns.get(session, campaign_id))
