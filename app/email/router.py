"""Admin email: a test message (JOBS-2) and campaigns (JOBS-3)."""

from fastapi import APIRouter, status

from app.auth.dependencies import AdminPrincipal
from app.core.dependencies import SessionDep, SettingsDep
from app.core.schemas import Page, PageNumber, PerPage, PrimaryKey
from app.email import campaigns as service
from app.email import service as outbox
from app.email.models import Campaign
from app.email.schemas import CampaignAccepted, CampaignCreate, CampaignRead, TestEmailRequest
from app.jobs.dependencies import JobsDep
from app.jobs.router import accepted
from app.jobs.schemas import TaskAccepted
from app.users.models import User

email_router = APIRouter(prefix="/email", tags=["email"])
campaigns_router = APIRouter(prefix="/campaigns", tags=["email"])


@email_router.post("/test", response_model=TaskAccepted, status_code=status.HTTP_202_ACCEPTED)
async def send_test_email(
    admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
    data: TestEmailRequest | None = None,
) -> TaskAccepted:
    """Send a test message (to your own address unless `to` is given); watch its task."""
    user = await session.get(User, admin.id)
    assert user is not None  # the principal was just loaded
    address = data.to if data is not None and data.to else user.email
    email = outbox.queue(
        session,
        settings,
        recipient=address,
        subject=f"Test message from {settings.app_name}",
        template="test",
        context={"requested_by": user.username},
        user_id=user.id,
    )
    await session.flush()
    job = await jobs.enqueue(session, "app.email.send_test", email.id, owner_id=admin.id)
    return accepted(job)


async def _read(session: SessionDep, campaign: Campaign) -> CampaignRead:
    numbers = await service.counts(session, campaign)
    return CampaignRead(
        id=campaign.id,
        subject=campaign.subject,
        status=campaign.status,
        created_by=campaign.created_by,
        task_id=campaign.job_id,
        total=campaign.total,
        sent=numbers.sent,
        failed=numbers.failed,
        pending=numbers.pending,
        cancelled=numbers.cancelled,
        created_at=campaign.created_at,
        finished_at=campaign.finished_at,
    )


@campaigns_router.post("/", response_model=CampaignAccepted, status_code=status.HTTP_202_ACCEPTED)
async def create_campaign(
    data: CampaignCreate, admin: AdminPrincipal, session: SessionDep, jobs: JobsDep
) -> CampaignAccepted:
    """Mail every active verified user, or the given users: one mail each, even after a crash."""
    campaign = service.create(
        session,
        created_by=admin.id,
        subject=data.subject,
        body_text=data.body_text,
        body_html=data.body_html,
        user_ids=data.user_ids,
    )
    await session.flush()
    job = await jobs.enqueue(session, service.RUN_TASK, campaign.id, owner_id=admin.id)
    await service.remember_job(session, campaign.id, job.id)
    return CampaignAccepted(
        **accepted(job).model_dump(),
        campaign_id=campaign.id,
        campaign_url=f"/api/v1/campaigns/{campaign.id}",
    )


@campaigns_router.get("/", response_model=Page[CampaignRead])
async def list_campaigns(
    admin: AdminPrincipal, session: SessionDep, page: PageNumber = 1, per_page: PerPage = 20
) -> Page[CampaignRead]:
    """Campaigns, newest first, with their counts."""
    rows, total = await service.list_page(session, offset=(page - 1) * per_page, limit=per_page)
    items = [await _read(session, row) for row in rows]
    return Page[CampaignRead].build(items, total=total, page=page, per_page=per_page)


@campaigns_router.get("/{campaign_id}", response_model=CampaignRead)
async def read_campaign(
    campaign_id: PrimaryKey, admin: AdminPrincipal, session: SessionDep
) -> CampaignRead:
    """Progress: total, sent, failed, pending; `completed` when nothing is pending."""
    return await _read(session, await service.get(session, campaign_id))
