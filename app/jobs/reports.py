"""Report tasks (JOBS-5): the activity report on demand, and yesterday's on a schedule."""

import logging
from datetime import date, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import update

from app.core.db import utcnow
from app.files.service import download_url
from app.jobs.base import JobTask, job
from app.jobs.errors import JobError
from app.jobs.models import Job
from app.reports import output, service
from app.reports.schemas import ReportFile

logger = logging.getLogger("app.jobs.reports")
STEPS = 1 + len(output.FORMATS)  # counting, then one per format


@job("app.reports.activity")
def activity_report(task: JobTask, owner_id: int, start: str, end: str) -> dict[str, Any]:
    return _build(task, owner_id, date.fromisoformat(start), date.fromisoformat(end))


@job("app.reports.daily")
def daily_report(task: JobTask) -> dict[str, Any]:
    """Yesterday (UTC), owned by the first superuser: the one account sure to be an admin."""

    async def owner() -> int:
        async with task.runtime.sessionmaker() as session:
            owner_id = await service.first_superuser_id(session)
            if owner_id is None:
                raise JobError("No active superuser to own the daily report.")
            # Beat sent it without an owner; the row now shows in the superuser's task list.
            await session.execute(
                update(Job).where(Job.id == task.request.id).values(owner_id=owner_id)
            )
            await session.commit()
            return owner_id

    yesterday = utcnow().date() - timedelta(days=1)
    return _build(task, task.run_async(owner()), yesterday, yesterday)


def _build(task: JobTask, owner_id: int, start: date, end: date) -> dict[str, Any]:
    """Synchronous between steps: progress checkpoints run their own coroutine on the loop."""
    runtime = task.runtime
    task.progress(0, STEPS, "Counting activity")

    async def count() -> service.ActivityReport:
        async with runtime.sessionmaker() as session:
            return await service.activity(session=session, start=start, end=end)

    report = task.run_async(count())
    generated_at = utcnow()
    stem = f"activity-report_{start.isoformat()}_{end.isoformat()}"

    async def write_and_store(fmt: output.Format) -> ReportFile:
        temp = runtime.storage.temp_path()
        try:
            if fmt.name == "xlsx":
                await anyio.to_thread.run_sync(output.write_workbook, temp, report, generated_at)
            else:
                await anyio.to_thread.run_sync(output.write_csv, temp, report)
            async with runtime.sessionmaker() as session:
                row = await output.store(
                    session=session,
                    storage=runtime.storage,
                    source=temp,
                    key=output.report_key(task.request.id or stem, fmt.extension),
                    filename=f"{stem}.{fmt.extension}",
                    content_type=fmt.content_type,
                    owner_id=owner_id,
                )
        finally:
            temp.unlink(missing_ok=True)
        return ReportFile(
            file_id=row.id, format=fmt.name, filename=row.filename,
            download_url=download_url(row.id), size=row.size,
        )  # fmt: skip

    files: list[ReportFile] = []
    for step, fmt in enumerate(output.FORMATS, start=1):
        task.progress(step, STEPS, f"Writing {fmt.name.upper()}")
        files.append(task.run_async(write_and_store(fmt)))
    task.progress(STEPS, STEPS, "Done")
    logger.info(
        "report %s..%s stored as files %s",
        start, end, [f.file_id for f in files], extra={"task_id": task.request.id},
    )  # fmt: skip
    return {
        "files": [f.model_dump(mode="json") for f in files],
        "summary": report.summary.model_dump(mode="json"),
    }
