"""Report tasks (JOBS-5): the activity report on demand, and yesterday's on a schedule."""

import logging
from datetime import date, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import utcnow
from app.files.service import download_url
from app.jobs import service as jobs
from app.jobs.base import JobTask, job
from app.jobs.errors import JobError
from app.reports import output, service
from app.reports.schemas import ReportFile

logger = logging.getLogger(__name__)
STEPS = 1 + len(output.FORMATS)  # counting, then one per format


@job("app.reports.activity", title="Activity report")
def activity_report(task: JobTask, owner_id: int, start: str, end: str) -> dict[str, Any]:
    return _build(task, owner_id, date.fromisoformat(start), date.fromisoformat(end))


@job("app.reports.daily", title="Daily activity report")
def daily_report(task: JobTask) -> dict[str, Any]:
    """Yesterday (UTC), owned by the first superuser: the one account sure to be an admin."""
    job_id = task.request.id
    owner_id = task.in_session(lambda session: _give_to_first_superuser(session, job_id))
    yesterday = utcnow().date() - timedelta(days=1)
    return _build(task, owner_id, yesterday, yesterday)


async def _give_to_first_superuser(session: AsyncSession, job_id: str) -> int:
    owner_id = await service.first_superuser_id(session=session)
    if owner_id is None:
        raise JobError("No active superuser to own the daily report.")
    # Beat sent it without an owner; the row now shows in the superuser's task list.
    await jobs.assign_owner(session=session, job_id=job_id, owner_id=owner_id)
    return owner_id


def _build(task: JobTask, owner_id: int, start: date, end: date) -> dict[str, Any]:
    """Count, then write and store each format: progress checkpoints between the steps."""
    task.progress(0, STEPS, "Counting activity")
    report = task.in_session(
        lambda session: service.activity(session=session, start=start, end=end)
    )
    generated_at = utcnow()
    stem = f"activity-report_{start.isoformat()}_{end.isoformat()}"
    files: list[ReportFile] = []
    for step, fmt in enumerate(output.FORMATS, start=1):
        task.progress(step, STEPS, f"Writing {fmt.name.upper()}")
        files.append(_write_and_store(task, report, fmt, generated_at, owner_id, stem))
    task.progress(STEPS, STEPS, "Done")
    logger.info(
        "report %s..%s stored as files %s",
        start, end, [f.file_id for f in files], extra={"task_id": task.request.id},
    )  # fmt: skip
    return {
        "files": [f.model_dump(mode="json") for f in files],
        "summary": report.summary.model_dump(mode="json"),
    }


def _write_and_store(
    task: JobTask,
    report: service.ActivityReport,
    fmt: output.Format,
    generated_at: datetime,
    owner_id: int,
    stem: str,
) -> ReportFile:
    """One format: written to a temp file off the loop, then stored (idempotent by key)."""
    storage = task.runtime.storage
    temp = storage.temp_path()
    try:
        if fmt.name == "xlsx":
            write = anyio.to_thread.run_sync(output.write_workbook, temp, report, generated_at)
        else:
            write = anyio.to_thread.run_sync(output.write_csv, temp, report)
        task.run_async(write)
        row = task.in_session(
            lambda session: output.store(
                session=session,
                storage=storage,
                source=temp,
                key=output.report_key(task.request.id or stem, fmt.extension),
                filename=f"{stem}.{fmt.extension}",
                content_type=fmt.content_type,
                owner_id=owner_id,
            )
        )
    finally:
        temp.unlink(missing_ok=True)
    return ReportFile(
        file_id=row.id, format=fmt.name, filename=row.filename,
        download_url=download_url(row.id), size=row.size,
    )  # fmt: skip
