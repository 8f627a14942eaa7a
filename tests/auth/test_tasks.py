"""Auth's task against a real worker on both brokers: the session purge, run by name as beat
sends it (JOBS-6)."""

import uuid
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import AuthSession, RefreshToken
from app.core.db import utcnow
from tests.support.factories import Factory
from tests.support.workers import JobsStack, run_by_name


async def test_purge_sessions_removes_ended_sessions_and_their_refresh_tokens(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_factory: Factory
) -> None:
    user = await jobs_factory.account()
    now = utcnow()
    long_ago = now - timedelta(days=jobs_stack.settings.auth_session_retention_days + 1)
    sessions = {
        "expired": {"expires_at": long_ago},
        "revoked": {"expires_at": now + timedelta(days=1), "revoked_at": long_ago},
        "recently_ended": {"expires_at": now - timedelta(hours=1)},  # kept for a while
        "live": {"expires_at": now + timedelta(days=1)},
    }
    ids = {name: uuid.uuid4().hex for name in sessions}
    async with jobs_app.state.services.sessionmaker() as session:
        for name, values in sessions.items():
            session.add(
                AuthSession(id=ids[name], user_id=user.id, scopes="", created_at=long_ago, **values)
            )
            session.add(
                RefreshToken(
                    session_id=ids[name],
                    token_hash=uuid.uuid4().hex * 2,
                    expires_at=values["expires_at"],
                )
            )
        await session.commit()

    job = await run_by_name(jobs_app, jobs_stack, "app.maintenance.purge_sessions")

    assert job.state == "SUCCESS", job.error
    assert job.result is not None
    assert job.result["sessions"] >= 2
    async with jobs_app.state.services.sessionmaker() as session:
        left = set((await session.execute(select(AuthSession.id))).scalars())
        tokens = set((await session.execute(select(RefreshToken.session_id))).scalars())
    assert ids["expired"] not in left
    assert ids["revoked"] not in left
    assert {ids["live"], ids["recently_ended"]} <= left
    assert ids["expired"] not in tokens  # cascaded on both databases
    assert ids["live"] in tokens
    # The user's own login is untouched: their token still works.
    me = await jobs_factory.client.get("/api/v1/users/me", headers=user.headers)
    assert me.status_code == 200
