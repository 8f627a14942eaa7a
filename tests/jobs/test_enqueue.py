"""Enqueueing when the broker is down: a prompt 503 in the envelope, and the job says so."""

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.jobs.models import Job, JobState
from app.main import create_app
from tests.support.processes import free_port
from tests.support.settings import make_settings


@pytest.mark.parametrize("with_redis_results", [True, False])
async def test_a_dead_redis_broker_gives_a_prompt_503_and_a_failed_job(
    sqlite_template: Path, tmp_path: Path, with_redis_results: bool
) -> None:
    import shutil

    shutil.copy(sqlite_template, tmp_path / "app.db")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(
        tmp_path,
        celery_broker_url=dead,
        celery_result_backend=dead if with_redis_results else None,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        from app.core.errors import ServiceUnavailable

        async with app.state.services.sessionmaker() as session:
            began = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                await app.state.jobs.enqueue(session, "app.noop")
            elapsed = time.monotonic() - began
        async with app.state.services.sessionmaker() as session:
            job = (await session.execute(select(Job))).scalar_one()
    assert job.state == JobState.FAILURE
    assert job.error == "The task could not be queued."
    assert elapsed < 10, f"the caller waited {elapsed:.1f}s for a dead broker"
