"""Campaigns end to end (JOBS-3): a real worker mails every recipient through a real SMTP
server exactly once, even when it is killed halfway, on the embedded and the Redis broker."""

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth.models import Role
from app.jobs.models import FINISHED
from tests.support.factories import Factory
from tests.support.smtp import Received, SmtpServer, message_parts
from tests.support.waiting import eventually_async
from tests.support.workers import JobsStack

MAIL_DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def jobs_overrides(smtp_server: SmtpServer) -> dict[str, str]:
    return {
        **smtp_server.settings(),
        "EMAIL_FROM": "App <noreply@app.example.test>",
        # A killed sender's claim lapses quickly, and Redis hands unacknowledged messages
        # out again soon after a worker dies.
        "EMAIL_LEASE_SECONDS": "3",
        "EMAIL_SWEEP_AFTER_SECONDS": "2",
        "JOB_SOFT_TIME_LIMIT_SECONDS": "4",
        "JOB_TIME_LIMIT_SECONDS": "5",
        "CELERY_VISIBILITY_TIMEOUT_SECONDS": "6",
    }


async def test_campaign_survives_a_killed_worker_mailing_each_recipient_once(
    jobs_stack: JobsStack, smtp_server: SmtpServer, jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient, jobs_factory: Factory,
) -> None:  # fmt: skip
    admin = await jobs_factory.account(Role.ADMIN)
    users = [
        await jobs_factory.register(f"slow{jobs_stack.broker[:3]}{n}x{id(admin) % 10_000}")
        for n in range(30)
    ]
    for user in users:  # campaigns mail verified addresses only
        await jobs_factory.set_fields(user["id"], is_verified=True)
    addresses = {user["email"] for user in users}

    def campaign_mail() -> list[Received]:
        with smtp_server.sink.lock:
            return [
                item for item in smtp_server.sink.received
                if item.message["Subject"] == "News" and item.recipients[0] in addresses
            ]  # fmt: skip

    response = await jobs_client.post(
        "/api/v1/campaigns/",
        json={
            "subject": "News",
            "body_text": "Hello\n\nThere is news.",
            "user_ids": [user["id"] for user in users],
        },
        headers=admin.headers,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()

    # Kill the worker (and its pool) once some, but not all, campaign mails have arrived.
    await eventually_async(
        lambda: len(campaign_mail()) >= 5,
        timeout=MAIL_DEADLINE_SECONDS,
        interval=0.02,
        what="5 campaign mails",
    )
    jobs_stack.worker.kill()
    arrived = len(campaign_mail())
    assert 0 < arrived < len(users)
    jobs_stack.worker.start()

    # Messages the dead worker held come back by themselves (embedded: at start; Redis: after
    # the visibility timeout, when kombu's throttled restore scan gets to them). The outbox
    # sweep doesn't wait for that: beat sends it every two minutes, here every second.
    async def swept() -> dict[str, Any] | None:
        await jobs_app.state.jobs.send("app.email.sweep_outbox")
        response = await jobs_client.get(
            f"/api/v1/tasks/{accepted['task_id']}", headers=admin.headers
        )
        if response.status_code == 404:  # no row yet
            return None
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()
        return state if state["state"] in FINISHED else None

    try:
        body = await eventually_async(
            swept, timeout=MAIL_DEADLINE_SECONDS * 2, interval=1.0, what="the campaign to finish"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{jobs_stack.worker.tail()}") from None
    assert body["state"] == "SUCCESS", body
    assert body["result"] == {
        "campaign_id": accepted["campaign_id"], "total": 30, "sent": 30, "failed": 0,
    }  # fmt: skip
    campaign = await jobs_client.get(accepted["campaign_url"], headers=admin.headers)
    assert campaign.json() | {"created_at": None, "finished_at": None} == {
        "id": accepted["campaign_id"], "subject": "News", "status": "completed",
        "created_by": admin.id, "task_id": accepted["task_id"], "total": 30, "sent": 30,
        "failed": 0, "pending": 0, "cancelled": 0, "created_at": None, "finished_at": None,
    }  # fmt: skip
    mails = campaign_mail()
    assert sorted(item.recipients[0] for item in mails) == sorted(addresses)  # each once
    text, html = message_parts(mails[0].message)
    assert "There is news." in text
    assert "<p>There is news.</p>" in html
