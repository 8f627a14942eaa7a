"""The per-user activity report (issue 15, item 8) in process: counts per counted source and
UTC day for one user only, the workbook with its chart, and who may ask for whose report.
The job end to end (a real worker, the file downloaded) is in test_report_jobs.py."""

import io
import re
import zipfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openpyxl
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.auth.models import Role
from app.core.db import utcnow
from app.items.models import Item
from app.jobs.models import Job
from app.orders.models import Order, OrderStatus
from app.posts.models import Comment, Post
from app.reports import output, user_activity
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory, login_row

START, END = date(2020, 3, 1), date(2020, 3, 3)
URL = "/api/v1/reports/user-activity"
# The same SQL on both databases: one backend is enough (PostgreSQL, as deployed).
ON_POSTGRES = pytest.mark.parametrize("backend", ["postgres"])


def at(day: int, hour: int) -> datetime:
    return datetime(2020, 3, day, hour, tzinfo=UTC)


def order(owner_id: int, *, created_at: datetime) -> Order:
    return Order(
        owner_id=owner_id, status=OrderStatus.PENDING, postal_code="100-0001",
        prefecture="東京都", city="千代田区", street="1-1", total_jpy=Decimal(100),
        rates_jpy={"JPY": "1"}, created_at=created_at,
    )  # fmt: skip


async def test_one_users_sources_are_counted_per_utc_day_into_a_charted_workbook(
    app: FastAPI, factory: Factory, tmp_path: Path
) -> None:
    me, other = await factory.account(), await factory.account()
    logins = [(me.id, at(1, 0)), (me.id, at(1, 23)), (me.id, at(3, 12)), (me.id, at(4, 0)),
              (other.id, at(1, 12))]  # fmt: skip  # the 4th of March is after the period
    async with app.state.services.sessionmaker() as session:
        for user_id, when in logins:
            session.add(login_row(user_id, when))
        await session.commit()
    for owner, when in [(me, at(2, 6)), (me, at(2, 7)), (other, at(2, 8))]:
        item = await factory.item(owner)
        async with app.state.services.sessionmaker() as session:
            await session.execute(update(Item).where(Item.id == item["id"]).values(created_at=when))
            await session.commit()

    async with app.state.services.sessionmaker() as session:
        mine = Post(author_id=me.id, title="Mine", body="b", created_at=at(3, 9))
        theirs = Post(author_id=other.id, title="Theirs", body="b", created_at=at(1, 9))
        session.add_all([mine, theirs])
        await session.flush()
        session.add_all(
            [
                Comment(post_id=theirs.id, author_id=me.id, body="c", created_at=at(1, 10)),
                Comment(post_id=mine.id, author_id=other.id, body="c", created_at=at(3, 10)),
            ]
        )
        session.add_all(
            order(owner_id, created_at=when)
            for owner_id, when in [(me.id, at(2, 23)), (me.id, at(3, 0)), (other.id, at(2, 1))]
        )
        await session.commit()

    async with app.state.services.sessionmaker() as session:
        report = await user_activity.user_activity(
            session=session, user_id=me.id, start=START, end=END
        )

    keys = ["logins", "items", "posts", "comments", "orders"]
    assert [source.key for source in report.sources] == keys
    assert report.days == [START, date(2020, 3, 2), END]
    assert report.counts == {
        "logins": [2, 0, 1],
        "items": [0, 2, 0],
        "posts": [0, 0, 1],
        "comments": [1, 0, 0],
        "orders": [0, 1, 1],  # either side of midnight UTC
    }
    totals = {"logins": 3, "items": 2, "posts": 1, "comments": 1, "orders": 2}
    assert report.summary()["totals"] == totals
    assert report.summary()["username"] == me.username

    path = tmp_path / "report.xlsx"
    output.write_user_workbook(path, report, utcnow())
    content = path.read_bytes()
    book = openpyxl.load_workbook(io.BytesIO(content))
    assert book.sheetnames == ["Activity per day", "Summary"]
    rows = list(book["Activity per day"].iter_rows(values_only=True))
    assert rows[0] == (
        "Date", "Logins", "Items created", "Posts written", "Comments written", "Orders placed",
    )  # fmt: skip
    assert [(r[0].date(), *r[1:]) for r in rows[1:]] == [
        (START, 2, 0, 0, 1, 0), (date(2020, 3, 2), 0, 2, 0, 0, 1), (END, 1, 0, 1, 0, 1),
    ]  # fmt: skip
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["Username"] == me.username
    assert (summary["Logins (total)"], summary["Items created (total)"]) == (3, 2)
    # openpyxl drops charts when reading: look into the package itself.
    with zipfile.ZipFile(io.BytesIO(content)) as package:
        chart = package.read("xl/charts/chart1.xml").decode()
    assert "<c:barChart>" in chart
    referenced = set(re.findall(r"<c:f>([^<]+)</c:f>", chart))
    # One series per counted source: a source added to SOURCES shows up here by itself.
    assert {f"'Activity per day'!${c}$2:${c}$4" for c in "BCDEF"} <= referenced


@ON_POSTGRES
async def test_users_report_on_themselves_and_admins_on_anyone(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    user, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)

    own = await client.post(URL, json={"days": 7}, headers=user.headers)
    assert own.status_code == 202, own.text
    for_other = await client.post(URL, json={"user_id": admin.id}, headers=user.headers)
    assert_envelope(for_other, 403, "forbidden")
    by_admin = await client.post(URL, json={"user_id": other.id}, headers=admin.headers)
    assert by_admin.status_code == 202, by_admin.text
    missing = await client.post(URL, json={"user_id": 10**9}, headers=admin.headers)
    assert_envelope(missing, 404, "not_found")
    assert_envelope(await client.post(URL, json={}), 401, "unauthorized")

    too_long = await client.post(URL, json={"days": 91}, headers=user.headers)  # setting: 90
    assert_envelope(too_long, 422, "validation_error")
    assert "USER_REPORT_MAX_DAYS" in too_long.json()["error"]["details"][0]["message"]
    zero = await client.post(URL, json={"days": 0}, headers=user.headers)
    assert_envelope(zero, 422, "validation_error")

    today = utcnow().date()
    async with app.state.services.sessionmaker() as session:
        job = await session.get(Job, by_admin.json()["task_id"])
    assert job is not None
    # Owned by the admin who asked; the range is pinned when asked, so a re-run is the same.
    assert (job.name, job.owner_id) == (user_activity.TASK, admin.id)
    assert job.args == [admin.id, other.id, (today - timedelta(days=29)).isoformat(),
                        today.isoformat()]  # fmt: skip
