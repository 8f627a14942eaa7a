"""The scheduled daily report, mailed to the admins (issue 15, item 7): the day's figures,
links to its files and, while small enough, the workbook attached.

Each admin's mail has a Message-ID fixed by the report's task and the admin, so a task run
twice (late acknowledgement after a crash) finds the rows it made and mails nobody twice.
"""

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Role, User
from app.core.config import Settings
from app.email import service as outbox
from app.email.delivery import ATTACHMENTS_KEY, sender_domain
from app.email.models import Email
from app.reports.schemas import ActivitySummary, ReportFile

TEMPLATE = "daily_report"  # app/email/templates/daily_report.{txt,html}


def message_id_for(*, settings: Settings, job_id: str, user_id: int) -> str:
    return f"<daily-report.{job_id}.{user_id}@{sender_domain(settings)}>"


async def mail_admins(
    *,
    session: AsyncSession,
    settings: Settings,
    job_id: str,
    day: date,
    summary: ActivitySummary,
    files: list[ReportFile],
    attachments: list[dict[str, str]],
) -> list[int]:
    """Queue one mail per active, verified admin not mailed yet for this task; the new ids."""
    admins = (
        await session.execute(
            select(User.id, User.email)
            .where(
                User.role.in_((Role.ADMIN, Role.SUPERUSER)),
                User.is_active.is_(True),
                # An unverified address may not be theirs: report figures go to proven ones.
                User.is_verified.is_(True),
            )
            .order_by(User.id)
        )
    ).all()
    wanted = {
        user_id: message_id_for(settings=settings, job_id=job_id, user_id=user_id)
        for user_id, _ in admins
    }
    done = set(
        (
            await session.execute(
                select(Email.message_id).where(Email.message_id.in_(list(wanted.values())))
            )
        ).scalars()
    )
    base = settings.public_base_url.rstrip("/")
    context: dict[str, Any] = {
        "day": day.isoformat(),
        "figures": [
            ["Sign-ups", summary.signups],
            ["Active users", summary.active_users],
            ["Sessions started", summary.sessions],
            ["Items created", summary.items_created],
            ["Files stored", summary.files_stored],
            ["Accounts at the end", summary.users_at_end],
        ],
        "links": [
            {"format": f.format.upper(), "filename": f.filename, "url": base + f.download_url}
            for f in files
        ],
        ATTACHMENTS_KEY: attachments,
    }
    emails = [
        outbox.queue(
            session=session,
            settings=settings,
            recipient=address,
            subject=f"Daily activity report for {day.isoformat()}",
            template=TEMPLATE,
            context=context,
            user_id=user_id,
            message_id=wanted[user_id],
        )
        for user_id, address in admins
        if wanted[user_id] not in done
    ]
    await session.commit()
    return [email.id for email in emails]
