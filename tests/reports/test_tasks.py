"""JOBS-5 against a real worker on both brokers: figures from real rows, per UTC day, as a
workbook with a native chart and as CSV, downloaded through the owner-checked files route."""

import csv
import io
import re
import uuid
import zipfile
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import openpyxl
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from app.auth.models import Role, User
from app.core.db import utcnow
from app.files.models import StoredFile
from app.items.models import Item
from app.jobs.models import FINISHED, Job
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory, login_row
from tests.support.waiting import eventually_async
from tests.support.workers import TASK_DEADLINE_SECONDS, JobsStack, wait_for_task

JST = timezone(timedelta(hours=9))
DAYS = [date(2020, 3, 1), date(2020, 3, 2), date(2020, 3, 3)]


def at(day: int, hour: int, minute: int = 0, tz: timezone = UTC) -> datetime:
    return datetime(2020, 3, day, hour, minute, tzinfo=tz)


async def _known_activity(app: FastAPI, factory: Factory) -> None:
    """Three accounts, sessions, items and a file on known days of March 2020 (UTC), some
    written in another time zone and some on a day's edge, so grouping by UTC day shows."""
    a, b, c = [await factory.account() for _ in range(3)]
    created = {a.id: at(1, 0, 0), b.id: at(2, 8, 59, JST), c.id: at(3, 0, 0)}  # b: 1st 23:59 UTC
    async with app.state.services.sessionmaker() as session:
        for user_id, when in created.items():
            await session.execute(update(User).where(User.id == user_id).values(created_at=when))
        for user_id, when in [(a.id, at(1, 9)), (a.id, at(1, 23, 59)), (b.id, at(2, 12)),
                              (c.id, at(4, 8, 0, JST))]:  # fmt: skip  # c: 3rd 23:00 UTC
            session.add(login_row(user_id, when))
        await session.commit()
    for owner, when in [(a, at(1, 12)), (b, at(3, 5, 0, JST))]:  # the second: 2nd 20:00 UTC
        item = await factory.item(owner)
        async with app.state.services.sessionmaker() as session:
            await session.execute(update(Item).where(Item.id == item["id"]).values(created_at=when))
            await session.commit()
    async with app.state.services.sessionmaker() as session:
        session.add(
            StoredFile(
                key=f"{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}",
                filename="x.png",
                content_type="image/png",
                size=1,
                sha256="0" * 64,
                owner_id=a.id,
                created_at=at(3, 12),
            )
        )
        await session.commit()


EXPECTED = {  # per day: sign-ups, active users, sessions, items created, files stored
    DAYS[0]: [2, 1, 2, 1, 0],
    DAYS[1]: [0, 1, 1, 1, 0],
    DAYS[2]: [1, 1, 1, 0, 1],
}


async def _run_report(
    stack: JobsStack, client: httpx.AsyncClient, admin: Account, start: date, end: date
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/reports",
        json={"start": start.isoformat(), "end": end.isoformat()},
        headers=admin.headers,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status_url"] == f"/api/v1/tasks/{accepted['task_id']}"
    return await wait_for_task(client, admin.headers, accepted["task_id"], stack=stack)


async def test_a_report_counts_real_rows_per_utc_day_in_xlsx_with_a_chart_and_csv(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    admin = await jobs_factory.account(Role.ADMIN)
    await _known_activity(jobs_app, jobs_factory)

    body = await _run_report(jobs_stack, jobs_client, admin, DAYS[0], DAYS[-1])

    assert body["state"] == "SUCCESS", body
    assert body["progress"] == {"current": 3, "total": 3, "status": "Done"}
    result = body["result"]
    assert result["summary"] == {
        "start": "2020-03-01", "end": "2020-03-03", "days": 3, "signups": 3,
        "active_users": 3, "sessions": 4, "items_created": 2, "files_stored": 1,
        "users_at_end": 3,
    }  # fmt: skip
    files = {f["format"]: f for f in result["files"]}
    assert set(files) == {"xlsx", "csv"}

    xlsx = await jobs_client.get(files["xlsx"]["download_url"], headers=admin.headers)
    assert xlsx.status_code == 200
    assert xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert "activity-report_2020-03-01_2020-03-03.xlsx" in xlsx.headers["content-disposition"]
    assert len(xlsx.content) == files["xlsx"]["size"]
    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    assert book.sheetnames == ["Daily activity", "Summary"]
    sheet = book["Daily activity"]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == (
        "Date", "Sign-ups", "Active users", "Sessions started", "Items created", "Files stored",
    )  # fmt: skip
    assert {row[0].date(): list(row[1:]) for row in rows[1:]} == EXPECTED
    assert sheet["A1"].font.bold
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["Sign-ups"] == 3
    assert summary["Active users (distinct)"] == 3

    # openpyxl drops charts when reading: look into the package itself.
    with zipfile.ZipFile(io.BytesIO(xlsx.content)) as package:
        names = package.namelist()
        assert "xl/charts/chart1.xml" in names
        chart = package.read("xl/charts/chart1.xml").decode()
        drawing_rels = package.read("xl/worksheets/_rels/sheet1.xml.rels").decode()
    assert "<c:barChart>" in chart
    assert "<c:lineChart>" in chart
    referenced = set(re.findall(r"<c:f>([^<]+)</c:f>", chart))
    assert {
        "'Daily activity'!$B$2:$B$4", "'Daily activity'!$D$2:$D$4",
        "'Daily activity'!$C$2:$C$4", "'Daily activity'!$A$2:$A$4",
    } <= referenced  # fmt: skip
    assert "drawing" in drawing_rels  # the chart sits on the data sheet

    text = (await jobs_client.get(files["csv"]["download_url"], headers=admin.headers)).text
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == [
        "day", "signups", "active_users", "sessions", "items_created", "files_stored",
    ]  # fmt: skip
    assert {date.fromisoformat(r[0]): [int(v) for v in r[1:]] for r in parsed[1:]} == EXPECTED

    listed = (await jobs_client.get("/api/v1/reports", headers=admin.headers)).json()
    assert body["id"] in [task["id"] for task in listed["items"]]


async def test_report_files_are_private_to_admins_and_reruns_are_idempotent(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    admin, user = await jobs_factory.account(Role.ADMIN), await jobs_factory.account()
    today = utcnow().date()
    body = await _run_report(jobs_stack, jobs_client, admin, today - timedelta(days=6), today)
    assert body["state"] == "SUCCESS", body
    assert len(body["result"]["files"]) == 2
    assert body["result"]["summary"]["days"] == 7
    assert body["result"]["summary"]["signups"] >= 2  # at least these two accounts, today
    for file in body["result"]["files"]:
        denied = await jobs_client.get(file["download_url"], headers=user.headers)
        assert_envelope(denied, 404, "not_found")
    # Late acknowledgement can run a task twice: the same task id reuses its keys and rows.
    await jobs_app.state.jobs.send(
        "app.reports.activity", admin.id, (today - timedelta(days=6)).isoformat(),
        today.isoformat(), task_id=body["id"],
    )  # fmt: skip
    again = await _wait_for_row(jobs_app, body["id"], jobs_stack, attempts=2)
    assert again.state == "SUCCESS"
    assert again.result is not None
    assert [f["file_id"] for f in again.result["files"]] == [
        f["file_id"] for f in body["result"]["files"]
    ]
    stem = f"activity-report_{today - timedelta(days=6)}_{today}"
    async with jobs_app.state.services.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(StoredFile).where(StoredFile.filename.like(stem + "%"))
        )
    assert count == 2


async def test_only_admins_start_or_list_reports(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    user = await jobs_factory.account()
    payload = {"start": "2020-01-01", "end": "2020-01-31"}
    refused = await jobs_client.post("/api/v1/reports", json=payload, headers=user.headers)
    assert_envelope(refused, 403, "forbidden")
    assert_envelope(
        await jobs_client.get("/api/v1/reports", headers=user.headers), 403, "forbidden"
    )
    anonymous = await jobs_client.post("/api/v1/reports", json=payload)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"start": "2020-02-01", "end": "2020-01-01"}, "start must not be after end"),
        ({"start": "2020-01-01", "end": "2099-01-01"}, "end must not be after today"),
        ({"start": "2020-01-01", "end": "2021-01-01"}, "at most 366 days"),  # 367 days
        ({"start": "2020-01-01", "end": "2020-13-01"}, "valid date"),
        ({"start": "2020-01-01"}, "Field required"),
        ({"start": "2020-01-01", "end": "2020-01-02", "owner": 1}, "Extra inputs"),
    ],
)
async def test_bad_ranges_are_refused(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory, payload: dict[str, object], message: str
) -> None:
    admin = await jobs_factory.account(Role.ADMIN)
    response = await jobs_client.post("/api/v1/reports", json=payload, headers=admin.headers)
    assert_envelope(response, 422, "validation_error")
    assert message in response.text


async def test_the_daily_report_covers_yesterday_for_the_first_superuser(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    superuser = await jobs_factory.account(Role.SUPERUSER)
    task_id = await jobs_app.state.jobs.send("app.reports.daily")  # as beat sends it: no row

    job = await _wait_for_row(jobs_app, task_id, jobs_stack)

    assert job.state == "SUCCESS", (job.error, jobs_stack.worker.tail())
    assert job.owner_id is not None
    async with jobs_app.state.services.sessionmaker() as session:
        owner = await session.get(User, job.owner_id)
    assert owner is not None
    assert owner.role == Role.SUPERUSER
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    assert job.result is not None
    assert job.result["summary"]["start"] == job.result["summary"]["end"] == yesterday
    assert owner.id == superuser.id
    # The superuser sees it among their tasks and can download its files.
    body = await wait_for_task(jobs_client, superuser.headers, task_id, stack=jobs_stack)
    assert body["state"] == "SUCCESS"
    for file in job.result["files"]:
        download = await jobs_client.get(file["download_url"], headers=superuser.headers)
        assert download.status_code == 200
        assert len(download.content) == file["size"]


async def _wait_for_row(app: FastAPI, task_id: str, stack: JobsStack, attempts: int = 1) -> Job:
    """Tasks sent without a row (as beat sends them) get one when they start."""

    async def finished() -> Job | None:
        async with app.state.services.sessionmaker() as session:
            job: Job | None = await session.get(Job, task_id)
        done = job is not None and job.state in FINISHED and job.attempts >= attempts
        return job if done else None

    try:
        found: Job = await eventually_async(
            finished, timeout=TASK_DEADLINE_SECONDS, what=f"task {task_id} to finish"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.worker.tail()}") from None
    return found
