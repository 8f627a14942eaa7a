"""Issue 15's jobs on one real worker (one module, one worker: CI time), whose mail goes
through the HTTP mail backend to a local provider server (tests/support/mail_api.py, a stand-in
for the third-party service): outbox rows delivered with a transient failure retried, the
per-user activity report downloaded by whoever asked for it, and the scheduled daily report
mailed to the admins. One broker is enough: what differs between brokers has its own tests."""

import base64
import io
import zipfile
from datetime import timedelta
from functools import partial

import httpx
import openpyxl
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import Role
from app.core.db import utcnow
from app.email.models import Email, EmailStatus
from app.reports import mailing
from app.reports.output import XLSX_TYPE
from app.reports.schemas import ActivitySummary, ReportFile
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.mail_api import API_KEY, MailApiServer, Posted
from tests.support.waiting import eventually_async
from tests.support.workers import JobsStack, run_by_name, wait_for_task

BASE_URL = "https://app.example.test"
DEADLINE_SECONDS = 30.0
ON_REDIS = pytest.mark.parametrize("jobs_stack", ["redis"], indirect=True, scope="module")
# The same SQL on both databases: one backend is enough (PostgreSQL, as deployed).
ON_POSTGRES = pytest.mark.parametrize("backend", ["postgres"])


@pytest.fixture(scope="module")
def jobs_overrides(mail_api: MailApiServer) -> dict[str, str]:
    return {
        **mail_api.settings(),
        "PUBLIC_BASE_URL": BASE_URL,
        "EMAIL_MAX_RETRIES": "2",
        "EMAIL_RETRY_BACKOFF_SECONDS": "0.2",
        "EMAIL_RETRY_BACKOFF_MAX_SECONDS": "1",
        "EMAIL_HTTP_TIMEOUT_SECONDS": "5",
    }


async def _rows(app: FastAPI, ids: list[int]) -> dict[str, Email]:
    sessionmaker: async_sessionmaker[AsyncSession] = app.state.services.sessionmaker
    async with sessionmaker() as session:
        rows = await session.execute(select(Email).where(Email.id.in_(ids)))
        return {row.recipient: row for row in rows.scalars()}


@ON_REDIS
async def test_a_worker_delivers_through_the_api_retrying_a_transient_failure(
    jobs_stack: JobsStack, mail_api: MailApiServer, jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient, jobs_factory: Factory,
) -> None:  # fmt: skip
    admin = await jobs_factory.account(Role.ADMIN)
    good, once, refused = "ok-w@example.com", "flakyonce-w@example.com", "reject-w@example.com"
    response = await jobs_client.post(
        "/api/v1/email/send",
        json={"to": [good, once, refused], "subject": "Ops notice", "text": "Maintenance."},
        headers=admin.headers,
    )
    assert response.status_code == 202, response.text
    ids = response.json()["email_ids"]

    async def final() -> dict[str, Email] | None:
        rows = await _rows(jobs_app, ids)
        done = all(row.status in (EmailStatus.SENT, EmailStatus.FAILED) for row in rows.values())
        return rows if done else None

    try:
        rows = await eventually_async(final, timeout=DEADLINE_SECONDS, what="three final mails")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{jobs_stack.worker.tail()}") from None

    assert (rows[good].status, rows[good].attempts) == (EmailStatus.SENT, 1)
    # 503 once: released for a retry, then delivered once, under the same Idempotency-Key.
    assert (rows[once].status, rows[once].attempts) == (EmailStatus.SENT, 2)
    assert mail_api.api.attempts[once] == 2
    assert len(mail_api.api.to(once)) == 1
    keys = {p.headers["idempotency-key"] for p in mail_api.api.posts if p.recipient == once}
    assert keys == {rows[once].message_id}
    # 422: the provider refuses this mail for good; not retried.
    assert (rows[refused].status, rows[refused].attempts) == (EmailStatus.FAILED, 1)
    error = rows[refused].last_error
    assert error is not None
    assert "422" in error
    assert API_KEY not in error
    assert mail_api.api.attempts[refused] == 1
    [posted] = mail_api.api.to(good)
    assert posted.body["subject"] == "Ops notice"
    assert "Maintenance." in posted.body["text"]
    assert API_KEY not in jobs_stack.worker.tail(400)


@ON_REDIS
async def test_a_user_activity_report_is_a_workbook_its_requester_downloads(
    jobs_stack: JobsStack, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    user, admin = await jobs_factory.account(), await jobs_factory.account(Role.ADMIN)
    await jobs_factory.item(user)  # today: one login (the factory's) and one item

    mine = await jobs_client.post(
        "/api/v1/reports/user-activity", json={"days": 3}, headers=user.headers
    )
    theirs = await jobs_client.post(
        "/api/v1/reports/user-activity", json={"user_id": user.id}, headers=admin.headers
    )
    assert mine.status_code == theirs.status_code == 202, mine.text
    own = await wait_for_task(jobs_client, user.headers, mine.json()["task_id"], stack=jobs_stack)
    by_admin = await wait_for_task(
        jobs_client, admin.headers, theirs.json()["task_id"], stack=jobs_stack
    )

    assert own["state"] == by_admin["state"] == "SUCCESS", (own, jobs_stack.worker.tail())
    assert own["progress"] == {"current": 2, "total": 2, "status": "Done"}
    today = utcnow().date()
    assert own["result"]["summary"] == {
        "user_id": user.id, "username": user.username,
        "start": (today - timedelta(days=2)).isoformat(), "end": today.isoformat(), "days": 3,
        "totals": {"logins": 1, "items": 1, "posts": 0, "comments": 0, "orders": 0},
    }  # fmt: skip
    assert by_admin["result"]["summary"]["days"] == 30
    totals = {"logins": 1, "items": 1, "posts": 0, "comments": 0, "orders": 0}
    assert by_admin["result"]["summary"]["totals"] == totals
    [file] = own["result"]["files"]
    download = await jobs_client.get(file["download_url"], headers=user.headers)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith(XLSX_TYPE)
    rows = list(openpyxl.load_workbook(io.BytesIO(download.content)).worksheets[0].values)
    assert rows[0] == (
        "Date", "Logins", "Items created", "Posts written", "Comments written", "Orders placed",
    )  # fmt: skip
    assert rows[-1][1:] == (1, 1, 0, 0, 0)  # today's row
    # The admin's copy is the admin's file, not the user's.
    [admins_file] = by_admin["result"]["files"]
    denied = await jobs_client.get(admins_file["download_url"], headers=user.headers)
    assert_envelope(denied, 404, "not_found")


@ON_REDIS
async def test_the_daily_report_is_mailed_to_verified_admins_with_the_workbook(
    jobs_stack: JobsStack, jobs_app: FastAPI, mail_api: MailApiServer, jobs_factory: Factory
) -> None:
    superuser = await jobs_factory.account(Role.SUPERUSER)
    admin, unverified = (
        await jobs_factory.account(Role.ADMIN),
        await jobs_factory.account(Role.ADMIN),
    )
    for account in (superuser, admin):
        await jobs_factory.set_fields(account.id, is_verified=True)

    job = await run_by_name(jobs_app, jobs_stack, "app.reports.daily")

    assert job.state == "SUCCESS", (job.error, jobs_stack.worker.tail())
    assert job.result is not None
    assert job.result["mailed"] == 2
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    files = {f["format"]: f for f in job.result["files"]}
    subject = f"Daily activity report for {yesterday}"

    def report_mail(address: str) -> list[Posted]:
        return [p for p in mail_api.api.to(address) if p.body["subject"] == subject]

    for account in (superuser, admin):
        address = account.email
        [posted] = await eventually_async(
            partial(report_mail, address), timeout=30, what=f"the report mail to {address}"
        )
        for file in files.values():
            assert BASE_URL + file["download_url"] in posted.body["text"]
            assert BASE_URL + file["download_url"] in posted.body["html"]
        [attached] = posted.body["attachments"]
        assert attached["filename"] == files["xlsx"]["filename"]
        assert attached["content_type"] == XLSX_TYPE
        workbook = base64.b64decode(attached["content"])
        assert len(workbook) == files["xlsx"]["size"]
        with zipfile.ZipFile(io.BytesIO(workbook)) as package:
            assert "xl/charts/chart1.xml" in package.namelist()
    assert report_mail(unverified.email) == []  # an unproven address gets no figures

    async def contexts_cleared() -> bool:
        async with jobs_app.state.services.sessionmaker() as session:
            rows = await session.execute(
                select(Email.status, Email.context).where(
                    Email.message_id.like(f"<daily-report.{job.id}.%")
                )
            )
            found = rows.all()
        return len(found) == 2 and all(
            status == EmailStatus.SENT and context is None for status, context in found
        )

    # Once sent, the rows keep no figures or workbook in the outbox.
    assert await eventually_async(contexts_cleared, timeout=30, what="report mails' contexts")


@ON_POSTGRES
async def test_mailing_the_daily_report_twice_mails_nobody_twice(
    app: FastAPI, factory: Factory
) -> None:
    admin = await factory.account(Role.ADMIN)
    await factory.set_fields(admin.id, is_verified=True)
    day = utcnow().date()
    summary = ActivitySummary(
        start=day, end=day, days=1, signups=1, active_users=1, sessions=1, items_created=0,
        files_stored=0, users_at_end=1,
    )  # fmt: skip
    files = [
        ReportFile(
            file_id=1,
            format="csv",
            filename="r.csv",
            download_url="/api/v1/files/1/content",
            size=1,
        )
    ]
    settings = app.state.services.settings
    made = []
    for _ in range(2):  # a late acknowledgement runs the task again under the same id
        async with app.state.services.sessionmaker() as session:
            made.append(
                await mailing.mail_admins(
                    session=session,
                    settings=settings,
                    job_id="task-1",
                    day=day,
                    summary=summary,
                    files=files,
                    attachments=[],
                )
            )
    assert len(made[0]) == 1
    assert made[1] == []
    async with app.state.services.sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Email)
            .where(Email.message_id.like("<daily-report.task-1.%"))
        )
    assert count == 1
