"""The campaign task (JOBS-3): list a campaign's recipients once, then one outbox send each.

Importing this module also plugs campaigns into the outbox (app.email.hooks): a campaign's
mail takes its body from the campaign, and each final mail counts towards its progress.
"""

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.campaigns import service
from app.core.config import Settings
from app.email import hooks
from app.email import service as outbox
from app.jobs.base import JobTask, job
from app.jobs.errors import Cancelled

hooks.register(
    hooks.CampaignHooks(
        body_context=service.body_context,
        record_progress=service.record_progress,
        in_progress=service.campaigns_in_progress,
    )
)


class CampaignTask(JobTask):
    """Its job stays in PROGRESS after the task body: the campaign is done when its last
    mail is, and the send task that sees that marks the job finished (`record_progress`).
    Only a re-run of a campaign already over finishes its job here."""

    # Its PROGRESS row outlives the body; a campaign whose last event was lost is finished
    # by the outbox sweep (app/email/tasks.py), not re-run by the job reconciler.
    reconcile_running = False

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        if not (isinstance(retval, dict) and retval.get("complete")):
            return
        campaign_id: int = retval["campaign_id"]
        final = self.in_session(lambda session: _final_counts(session, campaign_id))
        super().on_success(final, task_id, args, kwargs)


async def _final_counts(session: AsyncSession, campaign_id: int) -> dict[str, Any]:
    campaign = await service.get(session=session, campaign_id=campaign_id)
    numbers = await service.counts(session=session, campaign=campaign)
    return {"campaign_id": campaign.id, "total": numbers.total,
            "sent": numbers.sent, "failed": numbers.failed}  # fmt: skip


@job(service.RUN_TASK, title="Email campaign", base=CampaignTask)
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
) -> tuple[list[int], service.Counts | None]:
    campaign = await service.get(session=session, campaign_id=campaign_id)
    pending = await service.list_recipients(
        session=session, settings=settings, campaign=campaign, job_id=job_id
    )
    return pending, await service.record_progress(session=session, campaign_id=campaign_id)


async def _cancel(session: AsyncSession, campaign_id: int) -> None:
    campaign = await service.get(session=session, campaign_id=campaign_id)
    await service.cancel(session=session, campaign=campaign)
