"""Admin email campaigns (JOBS-3): one outbox row per recipient, progress from those rows.

The campaign task lists the recipients once, as rows unique per (campaign, user), so a task
that runs again after a crash adds nobody twice; each row is then one `app.email.send`, and
the outbox claim makes each row one mail. Progress and completion are counted from the rows.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.campaigns.errors import CampaignNotFound
from app.campaigns.models import Campaign, CampaignStatus
from app.core.config import Settings
from app.core.db import utcnow
from app.email.delivery import new_message_id
from app.email.models import Email, EmailStatus
from app.jobs import service as jobs_service
from app.jobs.models import JobState

RUN_TASK = "app.campaigns.run"  # a queued message names it: never rename
INSERT_BATCH = 500


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    sent: int
    failed: int
    pending: int  # pending or being sent
    cancelled: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.cancelled


def create(
    *,
    session: AsyncSession,
    created_by: int,
    subject: str,
    body_text: str,
    body_html: str | None,
    user_ids: list[int] | None,
) -> Campaign:
    audience: dict[str, Any] = (
        {"user_ids": sorted(set(user_ids))} if user_ids is not None else {"all_verified": True}
    )
    campaign = Campaign(
        created_by=created_by,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        audience=audience,
        status=CampaignStatus.PENDING,
    )
    session.add(campaign)
    return campaign


async def get(*, session: AsyncSession, campaign_id: int) -> Campaign:
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    return campaign


async def list_page(
    *, session: AsyncSession, offset: int, limit: int
) -> tuple[Sequence[Campaign], int]:
    total = (await session.execute(select(func.count()).select_from(Campaign))).scalar_one()
    rows = await session.execute(
        select(Campaign).order_by(Campaign.id.desc()).offset(offset).limit(limit)
    )
    return rows.scalars().all(), total


async def counts(*, session: AsyncSession, campaign: Campaign) -> Counts:
    rows = await session.execute(
        select(Email.status, func.count())
        .where(Email.campaign_id == campaign.id)
        .group_by(Email.status)
    )
    by_status: dict[EmailStatus, int] = {status: number for status, number in rows}  # noqa: C416
    listed = sum(by_status.values())
    return Counts(
        total=campaign.total if campaign.total is not None else listed,
        sent=by_status.get(EmailStatus.SENT, 0),
        failed=by_status.get(EmailStatus.FAILED, 0),
        pending=by_status.get(EmailStatus.PENDING, 0) + by_status.get(EmailStatus.SENDING, 0),
        cancelled=by_status.get(EmailStatus.CANCELLED, 0),
    )


async def list_recipients(
    *, session: AsyncSession, settings: Settings, campaign: Campaign, job_id: str | None
) -> list[int]:
    """Make the campaign's rows (idempotently) and return the ids of those still pending."""
    if campaign.status == CampaignStatus.PENDING:
        await _add_rows(session, settings, campaign)
        total = (
            await session.execute(
                select(func.count()).select_from(Email).where(Email.campaign_id == campaign.id)
            )
        ).scalar_one()
        campaign.total, campaign.status = total, CampaignStatus.SENDING
    if job_id is not None:
        campaign.job_id = job_id
    await session.commit()
    pending = await session.execute(
        select(Email.id)
        .where(Email.campaign_id == campaign.id, Email.status == EmailStatus.PENDING)
        .order_by(Email.id)
    )
    return list(pending.scalars().all())


async def _add_rows(session: AsyncSession, settings: Settings, campaign: Campaign) -> None:
    """One outbox row per recipient of the audience, in batches; rows already there stay."""
    # Verified addresses only, even when the admin names the users: an unverified address may
    # belong to someone who never signed up (a typo, or an address entered to harass them).
    users = (
        select(User.id, User.email)
        .where(User.is_active.is_(True), User.is_verified.is_(True))
        .order_by(User.id)
    )
    if "user_ids" in campaign.audience:
        users = users.where(User.id.in_(campaign.audience["user_ids"]))
    now = utcnow()
    batch: list[dict[str, Any]] = []
    for user_id, address in await session.execute(users):
        batch.append(
            {
                "campaign_id": campaign.id,
                "user_id": user_id,
                "recipient": address,
                "subject": campaign.subject,
                "template": "campaign",
                "context": None,  # the body is read from the campaign when sending
                "message_id": new_message_id(settings),
                "status": EmailStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
        if len(batch) >= INSERT_BATCH:
            await _insert_missing(session, batch)
            batch = []
    if batch:
        await _insert_missing(session, batch)


async def _insert_missing(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    # "ON CONFLICT DO NOTHING" on the (campaign_id, user_id) key: a re-run adds nobody twice.
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Email).on_conflict_do_nothing(index_elements=["campaign_id", "user_id"])
    await session.execute(statement, rows)


async def body_context(*, session: AsyncSession, campaign_id: int) -> dict[str, Any]:
    campaign = await get(session=session, campaign_id=campaign_id)
    return {"body_text": campaign.body_text, "body_html": campaign.body_html}


async def record_progress(*, session: AsyncSession, campaign_id: int) -> Counts | None:
    """After one of its mails is final: progress on the campaign's job, and completion when
    no mail is pending. Several senders may race here; the conditional UPDATE on the
    campaign's status lets exactly one of them finish it."""
    campaign = await session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.status != CampaignStatus.SENDING:
        return None
    numbers = await counts(session=session, campaign=campaign)
    meta = {
        "current": numbers.done,
        "total": numbers.total,
        "status": f"{numbers.sent} sent, {numbers.failed} failed",
    }
    if campaign.job_id is not None and await jobs_service.mark_progress(
        session=session, job_id=campaign.job_id, progress=meta
    ):
        await cancel(session=session, campaign=campaign)
        return await counts(session=session, campaign=campaign)
    if numbers.pending == 0:
        await _complete(session, campaign, numbers)
    return numbers


async def _complete(session: AsyncSession, campaign: Campaign, numbers: Counts) -> None:
    finished = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status == CampaignStatus.SENDING)
        .values(status=CampaignStatus.COMPLETED, finished_at=utcnow())
    )
    await session.commit()
    if finished.rowcount == 1 and campaign.job_id is not None:  # type: ignore[attr-defined]
        result = {"campaign_id": campaign.id, "total": numbers.total, "sent": numbers.sent,
                  "failed": numbers.failed}  # fmt: skip
        await jobs_service.mark_finished(
            session=session, job_id=campaign.job_id, state=JobState.SUCCESS, result=result
        )


async def cancel(*, session: AsyncSession, campaign: Campaign) -> None:
    """The owner cancelled the campaign's task: mail not yet claimed is never sent."""
    await session.execute(
        update(Email)
        .where(Email.campaign_id == campaign.id, Email.status == EmailStatus.PENDING)
        .values(status=EmailStatus.CANCELLED)
    )
    await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(status=CampaignStatus.CANCELLED, finished_at=utcnow())
    )
    await session.commit()
    if campaign.job_id is not None:
        await jobs_service.mark_finished(
            session=session, job_id=campaign.job_id, state=JobState.REVOKED, error="Cancelled."
        )


async def campaigns_in_progress(*, session: AsyncSession) -> list[int]:
    rows = await session.execute(
        select(Campaign.id).where(Campaign.status == CampaignStatus.SENDING)
    )
    return list(rows.scalars().all())


async def remember_job(*, session: AsyncSession, campaign_id: int, job_id: str) -> None:
    """The task sets this too (it may run first); both write the same value."""
    await session.execute(update(Campaign).where(Campaign.id == campaign_id).values(job_id=job_id))
    await session.commit()
