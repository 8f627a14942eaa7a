"""Activity over a date range, counted by the database, one UTC day per row (JOBS-5).

Every figure comes from a query over real rows (the seed's report made numbers up). Grouping
by day happens in SQL, so the cost is one small result per table whatever the row count.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.auth.models import AuthSession, Role, User
from app.files.models import StoredFile
from app.items.models import Item
from app.jobs import service as jobs_service
from app.jobs.models import Job
from app.reports.schemas import ActivitySummary, DayActivity

# The task names reports run under: listing "past reports" means these jobs.
REPORT_TASKS = ("app.reports.activity", "app.reports.daily", "app.reports.user_activity")
METRICS = ("signups", "active_users", "sessions", "items_created", "files_stored")


@dataclass(frozen=True, slots=True)
class ActivityReport:
    days: list[DayActivity]
    summary: ActivitySummary


def utc_day(*, column: InstrumentedAttribute[datetime], dialect: str) -> ColumnElement[str]:
    """'YYYY-MM-DD' of a UTC timestamp. SQLite stores our timestamps as UTC text; PostgreSQL
    holds timestamptz, rendered in the session's time zone unless converted explicitly."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)


def day_bounds(*, start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00 UTC, the day after end 00:00 UTC): the range as a half-open interval."""
    return (
        datetime.combine(start, time.min, tzinfo=UTC),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC),
    )


async def activity(*, session: AsyncSession, start: date, end: date) -> ActivityReport:
    dialect = session.get_bind().dialect.name
    since, until = day_bounds(start=start, end=end)

    def per_day(
        column: InstrumentedAttribute[datetime], counted: ColumnElement[int]
    ) -> Select[str, int]:
        day = utc_day(column=column, dialect=dialect).label("day")
        return select(day, counted).where(column >= since, column < until).group_by(day)

    queries = {
        "signups": per_day(User.created_at, func.count()),
        "active_users": per_day(AuthSession.created_at, func.count(AuthSession.user_id.distinct())),
        "sessions": per_day(AuthSession.created_at, func.count()),
        "items_created": per_day(Item.created_at, func.count()),
        "files_stored": per_day(StoredFile.created_at, func.count()),
    }
    counts: dict[str, dict[date, int]] = {}
    for metric, query in queries.items():
        rows = (await session.execute(query)).all()
        counts[metric] = {date.fromisoformat(day): count for day, count in rows}
    span = (end - start).days + 1
    days = [
        DayActivity(day=day, **{metric: counts[metric].get(day, 0) for metric in METRICS})
        for day in (start + timedelta(days=n) for n in range(span))
    ]
    distinct_active = (
        await session.execute(
            select(func.count(AuthSession.user_id.distinct())).where(
                AuthSession.created_at >= since, AuthSession.created_at < until
            )
        )
    ).scalar_one()
    users_at_end = (
        await session.execute(select(func.count()).select_from(User).where(User.created_at < until))
    ).scalar_one()
    summary = ActivitySummary(
        start=start,
        end=end,
        days=span,
        signups=sum(d.signups for d in days),
        active_users=distinct_active,
        sessions=sum(d.sessions for d in days),
        items_created=sum(d.items_created for d in days),
        files_stored=sum(d.files_stored for d in days),
        users_at_end=users_at_end,
    )
    return ActivityReport(days=days, summary=summary)


async def first_superuser_id(*, session: AsyncSession) -> int | None:
    """Who owns the scheduled daily report: the oldest active superuser, if there is one."""
    return (
        await session.execute(
            select(User.id)
            .where(User.role == Role.SUPERUSER, User.is_active.is_(True))
            .order_by(User.id)
            .limit(1)
        )
    ).scalar()


async def list_report_jobs(
    *, session: AsyncSession, offset: int, limit: int
) -> tuple[Sequence[Job], int]:
    """Every report task, whoever started it (admins only see this list)."""
    return await jobs_service.list_jobs(
        session=session, where=[Job.name.in_(REPORT_TASKS)], offset=offset, limit=limit
    )
