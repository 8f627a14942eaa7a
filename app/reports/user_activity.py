"""One user's activity over the last N days (issue 15, item 8): counts per source and UTC day.

The report is a list of counted sources. A source is a table with a timestamp and a column
naming the user; each is counted by one grouped query, so the cost is one small result per
source whatever the row count. A domain adds its count with one entry in `SOURCES`, and its
column appears in the workbook, in its chart and in the summary, with nothing else to change.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.auth.models import AuthSession, User
from app.items.models import Item
from app.orders.models import Order
from app.posts.models import Comment, Post
from app.reports.service import day_bounds, utc_day
from app.users.errors import UserNotFound

TASK = "app.reports.user_activity"  # queued messages carry it: never rename


@dataclass(frozen=True, slots=True)
class CountedSource:
    key: str  # the column's name in the task's result
    title: str  # the column's heading in the workbook
    timestamp: InstrumentedAttribute[datetime]
    user: InstrumentedAttribute[Any]  # the column that names the user (owner, author, ...)


SOURCES: tuple[CountedSource, ...] = (
    # Each login starts one session; sessions purged after AUTH_SESSION_RETENTION_DAYS are
    # no longer counted.
    CountedSource("logins", "Logins", AuthSession.created_at, AuthSession.user_id),
    # Created in the period, deleted since or not.
    CountedSource("items", "Items created", Item.created_at, Item.owner_id),
    CountedSource("posts", "Posts written", Post.created_at, Post.author_id),
    CountedSource("comments", "Comments written", Comment.created_at, Comment.author_id),
    # Placed in the period, whatever their status since.
    CountedSource("orders", "Orders placed", Order.created_at, Order.owner_id),
)


@dataclass(frozen=True, slots=True)
class UserActivity:
    user_id: int
    username: str
    start: date
    end: date
    sources: tuple[CountedSource, ...]
    days: list[date]
    counts: dict[str, list[int]]  # per source key: one count per day, in `days` order

    def total(self, key: str) -> int:
        return sum(self.counts[key])

    def summary(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "days": len(self.days),
            "totals": {source.key: self.total(source.key) for source in self.sources},
        }


def last_days(*, today: date, days: int) -> tuple[date, date]:
    """The last `days` UTC days, today included."""
    return today - timedelta(days=days - 1), today


async def subject(*, session: AsyncSession, user_id: int) -> User:
    """The user the report is about (deleted accounts included: their history still counts)."""
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


async def user_activity(
    *,
    session: AsyncSession,
    user_id: int,
    start: date,
    end: date,
    sources: tuple[CountedSource, ...] = SOURCES,
) -> UserActivity:
    user = await subject(session=session, user_id=user_id)
    dialect = session.get_bind().dialect.name
    since, until = day_bounds(start=start, end=end)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    counts: dict[str, list[int]] = {}
    for source in sources:
        day = utc_day(column=source.timestamp, dialect=dialect).label("day")
        rows = await session.execute(
            select(day, func.count())
            .where(source.user == user_id, source.timestamp >= since, source.timestamp < until)
            .group_by(day)
        )
        per_day = {date.fromisoformat(value): count for value, count in rows.all()}
        counts[source.key] = [per_day.get(d, 0) for d in days]
    return UserActivity(
        user_id=user.id, username=user.username, start=start, end=end, sources=sources,
        days=days, counts=counts,
    )  # fmt: skip
