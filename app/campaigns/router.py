"""Admin email campaigns (JOBS-3): start one, list them, follow one's progress."""

from fastapi import APIRouter, status

from app.auth.dependencies import AdminPrincipal
from app.campaigns import service
from app.campaigns.models import Campaign
from app.campaigns.schemas import CampaignAccepted, CampaignCreate, CampaignRead
from app.core.dependencies import SessionDep, SettingsDep
from app.core.schemas import Page, PageNumber, PerPage, PrimaryKey
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import accepted

# Tagged "email" as before the split: the tag is part of the published API description.
router = APIRouter(prefix="/campaigns", tags=["email"])


async def _read(session: SessionDep, campaign: Campaign) -> CampaignRead:
    numbers = await service.counts(session=session, campaign=campaign)
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


@router.post("/", response_model=CampaignAccepted, status_code=status.HTTP_202_ACCEPTED)
async def create_campaign(
    data: CampaignCreate,
    admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
) -> CampaignAccepted:
    """Mail every active verified user, or the given users: one mail each, even after a crash."""
    campaign = service.create(
        session=session,
        created_by=admin.id,
        subject=data.subject,
        body_text=data.body_text,
        body_html=data.body_html,
        user_ids=data.user_ids,
    )
    await session.flush()
    job = await jobs.enqueue(session, service.RUN_TASK, campaign.id, owner_id=admin.id)
    await service.remember_job(session=session, campaign_id=campaign.id, job_id=job.id)
    return CampaignAccepted(
        **accepted(job, settings=settings).model_dump(),
        campaign_id=campaign.id,
        campaign_url=settings.api_path(f"/campaigns/{campaign.id}"),
    )


@router.get("/", response_model=Page[CampaignRead])
async def list_campaigns(
    admin: AdminPrincipal, session: SessionDep, page: PageNumber = 1, per_page: PerPage = 20
) -> Page[CampaignRead]:
    """Campaigns, newest first, with their counts."""
    rows, total = await service.list_page(
        session=session, offset=(page - 1) * per_page, limit=per_page
    )
    items = [await _read(session, row) for row in rows]
    return Page[CampaignRead].build(items, total=total, page=page, per_page=per_page)


@router.get("/{campaign_id}", response_model=CampaignRead)
async def read_campaign(
    campaign_id: PrimaryKey, admin: AdminPrincipal, session: SessionDep
) -> CampaignRead:
    """Progress: total, sent, failed, pending; `completed` when nothing is pending."""
    return await _read(session, await service.get(session=session, campaign_id=campaign_id))
