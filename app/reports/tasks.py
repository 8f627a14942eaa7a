"""Report tasks (JOBS-5): the activity report on demand, and yesterday's on a schedule."""

import logging
from datetime import date, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import utcnow
from app.email import service as outbox
from app.email.delivery import attachment
from app.files.service import download_url
from app.jobs import service as jobs
from app.jobs.base import JobTask, job
from app.jobs.errors import JobError
from app.reports import mailing, output, service, user_activity
from app.reports.schemas import ReportFile

logger = logging.getLogger(__name__)
STEPS = 1 + len(output.FORMATS)  # counting, then one per format


@job("app.reports.activity", title="Activity report")
def activity_report(task: JobTask, owner_id: int, start: str, end: str) -> dict[str, Any]:
    return _result(*_build(task, owner_id, date.fromisoformat(start), date.fromisoformat(end)))


@job("app.reports.daily", title="Daily activity report")
def daily_report(task: JobTask) -> dict[str, Any]:
    """Yesterday (UTC), owned by the first superuser: the one account sure to be an admin;
    then mailed to every active, verified admin (REPORT_DAILY_MAIL_ADMINS)."""
    job_id = task.request.id
    owner_id = task.in_session(lambda session: _give_to_first_superuser(session, job_id))
    yesterday = utcnow().date() - timedelta(days=1)
    settings = task.runtime.settings
    captured: dict[str, bytes] = {}
    report, files = _build(
        task, owner_id, yesterday, yesterday,
        capture=captured if settings.report_daily_mail_admins else None,
    )  # fmt: skip
    result = _result(report, files)
    if settings.report_daily_mail_admins:
        result["mailed"] = _mail_admins(task, job_id or "", yesterday, report, files, captured)
    return result


def _mail_admins(
    task: JobTask,
    job_id: str,
    day: date,
    report: service.ActivityReport,
    files: list[ReportFile],
    captured: dict[str, bytes],
) -> int:
    settings = task.runtime.settings
    attachments = [
        attachment(filename=f.filename, content_type=output.XLSX_TYPE, data=captured["xlsx"])
        for f in files
        if f.format == "xlsx" and "xlsx" in captured
    ]
    email_ids = task.in_session(
        lambda session: mailing.mail_admins(
            session=session,
            settings=settings,
            job_id=job_id,
            day=day,
            summary=report.summary,
            files=files,
            attachments=attachments,
        )
    )
    # A lost send is not lost mail: the outbox sweep sends rows left pending.
    task.run_async(outbox.dispatch(jobs=task.runtime.jobs, email_ids=email_ids))
    return len(email_ids)


async def _give_to_first_superuser(session: AsyncSession, job_id: str) -> int:
    owner_id = await service.first_superuser_id(session=session)
    if owner_id is None:
        raise JobError("No active superuser to own the daily report.")
    # Beat sent it without an owner; the row now shows in the superuser's task list.
    await jobs.assign_owner(session=session, job_id=job_id, owner_id=owner_id)
    return owner_id


def _build(
    task: JobTask,
    owner_id: int,
    start: date,
    end: date,
    capture: dict[str, bytes] | None = None,
) -> tuple[service.ActivityReport, list[ReportFile]]:
    """Count, then write and store each format: progress checkpoints between the steps.
    With `capture`, the workbook's bytes are kept there too (up to the attachment limit)."""
    task.progress(0, STEPS, "Counting activity")
    report = task.in_session(
        lambda session: service.activity(session=session, start=start, end=end)
    )
    generated_at = utcnow()
    stem = f"activity-report_{start.isoformat()}_{end.isoformat()}"
    files: list[ReportFile] = []
    for step, fmt in enumerate(output.FORMATS, start=1):
        task.progress(step, STEPS, f"Writing {fmt.name.upper()}")
        files.append(
            _write_and_store(task, report, fmt, generated_at, owner_id, stem, capture=capture)
        )
    task.progress(STEPS, STEPS, "Done")
    logger.info(
        "report %s..%s stored as files %s",
        start, end, [f.file_id for f in files], extra={"task_id": task.request.id},
    )  # fmt: skip
    return report, files


def _result(report: service.ActivityReport, files: list[ReportFile]) -> dict[str, Any]:
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
    capture: dict[str, bytes] | None = None,
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
        limit = task.runtime.settings.report_mail_attach_max_bytes
        if capture is not None and fmt.name == "xlsx" and temp.stat().st_size <= limit:
            capture[fmt.name] = temp.read_bytes()
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
        download_url=download_url(row.id, settings=task.runtime.settings), size=row.size,
    )  # fmt: skip


# -- one user's activity (issue 15, item 8) ------------------------------------------------


@job(user_activity.TASK, title="User activity report")
def user_activity_report(
    task: JobTask, owner_id: int, user_id: int, start: str, end: str
) -> dict[str, Any]:
    """One user's counted sources per UTC day, as XLSX with a chart, owned by whoever asked."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    task.progress(0, 2, "Counting activity")
    report = task.in_session(
        lambda session: user_activity.user_activity(
            session=session, user_id=user_id, start=first, end=last
        )
    )
    task.progress(1, 2, "Writing XLSX")
    storage = task.runtime.storage
    stem = f"user-activity_{user_id}_{start}_{end}"
    temp = storage.temp_path()
    try:
        task.run_async(anyio.to_thread.run_sync(output.write_user_workbook, temp, report, utcnow()))
        row = task.in_session(
            lambda session: output.store(
                session=session,
                storage=storage,
                source=temp,
                key=output.report_key(task.request.id or stem, "user.xlsx"),
                filename=f"{stem}.xlsx",
                content_type=output.XLSX_TYPE,
                owner_id=owner_id,
            )
        )
    finally:
        temp.unlink(missing_ok=True)
    task.progress(2, 2, "Done")
    file = ReportFile(
        file_id=row.id, format="xlsx", filename=row.filename,
        download_url=download_url(row.id, settings=task.runtime.settings), size=row.size,
    )  # fmt: skip
    return {"files": [file.model_dump(mode="json")], "summary": report.summary()}
