"""USER_MAX_ACTIVE_JOBS at the API, both databases (no worker: the jobs stay queued): racing
submissions of one user cannot pass the cap, finished jobs free it, item variants are never
refused."""

from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.core.config import Settings
from app.jobs.models import Job, JobState
from tests.images.helpers import image_bytes
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import empty_postgres, make_settings

MAX_ACTIVE = 3


@pytest.fixture
async def settings(database_url: str | None, tmp_path: Path) -> Settings:
    if database_url is not None:
        await empty_postgres(database_url)
    return make_settings(tmp_path, database_url, user_max_active_jobs=MAX_ACTIVE)


async def upload(client: httpx.AsyncClient, owner: Account) -> int:
    response = await client.post(
        "/api/v1/files", files={"file": ("a.png", image_bytes())}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


async def process(client: httpx.AsyncClient, owner: Account, file_id: int) -> httpx.Response:
    body = {"file_id": file_id, "operations": [{"op": "grayscale"}]}
    return await client.post("/api/v1/images/process", json=body, headers=owner.headers)


async def test_racing_submissions_cannot_pass_the_cap(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    file_id = await upload(client, owner)
    answers: list[httpx.Response] = []

    async def submit() -> None:
        answers.append(await process(client, owner, file_id))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(submit)
    assert sorted(a.status_code for a in answers) == [202] * MAX_ACTIVE + [429] * 7
    refused = next(a for a in answers if a.status_code == 429)
    error = assert_envelope(refused, 429, "too_many_active_jobs")
    assert refused.headers["Retry-After"] == "5"
    assert "USER_MAX_ACTIVE_JOBS" in str(error["message"])

    # One finishes (as a worker would record it): one more is accepted, then the cap again.
    async with app.state.services.sessionmaker() as session:
        job_id = next(a.json()["task_id"] for a in answers if a.status_code == 202)
        await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.SUCCESS))
        await session.commit()
    assert (await process(client, owner, file_id)).status_code == 202
    assert (await process(client, owner, file_id)).status_code == 429


async def test_item_variants_are_never_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    file_id = await upload(client, owner)
    for _ in range(MAX_ACTIVE):
        assert (await process(client, owner, file_id)).status_code == 202
    item = await factory.item(owner)
    added = await client.post(
        f"/api/v1/items/{item['id']}/images", files={"file": ("p.png", image_bytes())},
        headers=owner.headers,
    )  # fmt: skip
    assert added.status_code == 201, added.text
    assert added.json()["variants_task_id"] is not None
