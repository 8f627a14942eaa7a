"""Reports (JOBS-5), for admins: start one, list past ones. Files download via /files."""

from fastapi import APIRouter, status

from app.auth.dependencies import AdminPrincipal
from app.core.dependencies import SessionDep
from app.core.schemas import Page, PageNumber, PerPage
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import TaskAccepted, TaskRead, accepted
from app.reports import service
from app.reports.schemas import ReportRequest

router = APIRouter(prefix="/reports", tags=["reports"])


@router.post(
    "",
    response_model=TaskAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "The job queue is unavailable"}},
)
async def start_report(
    data: ReportRequest, admin: AdminPrincipal, session: SessionDep, jobs: JobsDep
) -> TaskAccepted:
    """Sign-ups and activity per UTC day as XLSX (with a chart) and CSV; poll the task."""
    job = await jobs.enqueue(
        session, "app.reports.activity", admin.id, data.start.isoformat(), data.end.isoformat(),
        owner_id=admin.id,
    )  # fmt: skip
    return accepted(job)


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
