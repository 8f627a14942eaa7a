"""The sign-up analytics event runs after the response, as a FastAPI background task."""

import logging

import httpx
import pytest

from tests.support.assertions import sample
from tests.support.factories import Factory


async def test_a_sign_up_logs_an_event_and_counts_it(
    client: httpx.AsyncClient, factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    before = sample((await client.get("/metrics")).text, "user_signups_total", {})
    with caplog.at_level(logging.INFO, logger="app.analytics"):
        user = await factory.register()
    events = [r for r in caplog.records if r.name == "app.analytics"]
    assert [r.getMessage() for r in events] == ["user_signed_up"]
    assert events[0].user_id == user["id"]  # type: ignore[attr-defined]
    assert user["email"] not in events[0].__dict__.values()  # no personal data in analytics
    after = sample((await client.get("/metrics")).text, "user_signups_total", {})
    assert after == before + 1
