"""Reports (JOBS-5), for admins: start one, list past ones. Files download via /files."""

from fastapi import APIRouter, status

from app.auth.dependencies import AdminPrincipal, CurrentPrincipal
from app.core.db import utcnow
from app.core.dependencies import SessionDep, SettingsDep
from app.core.errors import OverSetting
from app.core.schemas import Page, PageNumber, PerPage
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import TaskAccepted, TaskRead, accepted
from app.reports import service, user_activity
from app.reports.errors import OthersReportForbidden
from app.reports.schemas import ReportRequest, UserActivityRequest

router = APIRouter(prefix="/reports", tags=["reports"])


@router.post(
    "",
    response_model=TaskAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "The job queue is unavailable"}},
)
async def start_report(
    data: ReportRequest,
    admin: AdminPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
) -> TaskAccepted:
    """Sign-ups and activity per UTC day as XLSX (with a chart) and CSV; poll the task."""
    job = await jobs.enqueue(
        session, "app.reports.activity", admin.id, data.start.isoformat(), data.end.isoformat(),
        owner_id=admin.id,
    )  # fmt: skip
    return accepted(job, settings=settings)


@router.get("", response_model=Page[TaskRead])
async def list_reports(
    _admin: AdminPrincipal, session: SessionDep, page: PageNumber = 1, per_page: PerPage = 20
) -> Page[TaskRead]:
    """Report tasks by any admin and the scheduled daily ones, newest first."""
    rows, total = await service.list_report_jobs(
        session=session, offset=(page - 1) * per_page, limit=per_page
    )
    return Page[TaskRead].build(
        [TaskRead.model_validate(row) for row in rows], total=total, page=page, per_page=per_page
    )


@router.post(
    "/user-activity",
    response_model=TaskAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "The job queue is unavailable"}},
)
async def start_user_activity_report(
    data: UserActivityRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    jobs: JobsDep,
) -> TaskAccepted:
    """One user's logins, items, posts, comments and orders per UTC day over the last `days`
    days, as XLSX with a chart; yours, or (admins) anyone's. The file is yours: download it
    from the task's result."""
    user_id = data.user_id or principal.id
    if user_id != principal.id and not principal.is_admin:
        raise OthersReportForbidden()
    if data.days > settings.user_report_max_days:
        raise OverSetting("body.days", settings.user_report_max_days, "USER_REPORT_MAX_DAYS")
    await user_activity.subject(session=session, user_id=user_id)
    start, end = user_activity.last_days(today=utcnow().date(), days=data.days)
    job = await jobs.enqueue(
        session, user_activity.TASK, principal.id, user_id, start.isoformat(), end.isoformat(),
        owner_id=principal.id,
    )  # fmt: skip
    return accepted(job, settings=settings)
