"""Per-user storage quota and file count (issue 13 item 7), on SQLite and PostgreSQL: refusals
carry the numbers, concurrent uploads of one user cannot pass the quota, deleting frees it."""

import os
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import Role
from app.core.config import Settings
from app.files.models import StoredFile
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import empty_postgres, make_settings

QUOTA_BYTES = 350_000
MAX_FILES = 4
BIG = b"\x89PNG\r\n\x1a\n" + os.urandom(100_000)  # three fit the quota, a fourth does not
SMALL = b"\x89PNG\r\n\x1a\n" + os.urandom(1_000)


@pytest.fixture
async def settings(database_url: str | None, tmp_path: Path) -> Settings:
    if database_url is not None:
        await empty_postgres(database_url)
    return make_settings(
        tmp_path, database_url, user_storage_quota_bytes=QUOTA_BYTES, user_max_files=MAX_FILES
    )


async def upload(client: httpx.AsyncClient, account: Account, content: bytes) -> httpx.Response:
    return await client.post(
        "/api/v1/files", files={"file": ("p.png", content, "image/png")}, headers=account.headers
    )


async def usage(client: httpx.AsyncClient, account: Account) -> dict[str, int]:
    response = await client.get("/api/v1/files/usage", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body


def numbers(error: dict[str, object]) -> dict[str, int]:
    details = error["details"]
    assert isinstance(details, list)
    return {d["field"]: int(d["message"]) for d in details}


async def live_rows(app: FastAPI, owner_id: int) -> list[StoredFile]:
    async with app.state.services.sessionmaker() as session:
        statement = select(StoredFile).where(StoredFile.owner_id == owner_id)
        return list((await session.execute(statement)).scalars().all())


async def stored_keys(app: FastAPI) -> set[str]:
    return {stored.key async for stored in app.state.services.storage.list_keys()}


async def test_an_upload_past_the_quota_is_refused_with_the_numbers(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account(Role.ADMIN)  # admins are not exempt
    for _ in range(3):
        assert (await upload(client, owner, BIG)).status_code == 201
    used = 3 * len(BIG)
    assert await usage(client, owner) == {
        "used_bytes": used, "quota_bytes": QUOTA_BYTES, "remaining_bytes": QUOTA_BYTES - used,
        "used_files": 3, "quota_files": MAX_FILES, "remaining_files": MAX_FILES - 3,
    }  # fmt: skip

    error = assert_envelope(await upload(client, owner, BIG), 413, "storage_quota_exceeded")
    left = QUOTA_BYTES - used
    # The read stopped once the file passed what is left: its size is "over" that.
    assert numbers(error) == {
        "quota_bytes": QUOTA_BYTES, "used_bytes": used, "remaining_bytes": left,
        "file_bytes": left + 1,
    }  # fmt: skip
    message = str(error["message"])
    for part in (f"over {left} bytes", f"you use {used} of your {QUOTA_BYTES}", f"{left} are left"):
        assert part in message, message
    assert len(await live_rows(app, owner.id)) == 3
    # Another user's quota is their own.
    other = await factory.account()
    assert (await upload(client, other, BIG)).status_code == 201


async def test_the_file_count_is_capped(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    for _ in range(MAX_FILES):
        assert (await upload(client, owner, SMALL)).status_code == 201
    error = assert_envelope(await upload(client, owner, SMALL), 413, "file_count_exceeded")
    assert numbers(error) == {"quota_files": MAX_FILES, "used_files": MAX_FILES,
                              "remaining_files": 0}  # fmt: skip
    assert f"{MAX_FILES} of your {MAX_FILES} files" in str(error["message"])


async def test_deleting_frees_quota(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    ids = [(await upload(client, owner, BIG)).json()["id"] for _ in range(3)]
    assert (await upload(client, owner, BIG)).status_code == 413
    deleted = await client.delete(f"/api/v1/files/{ids[0]}", headers=owner.headers)
    assert deleted.status_code == 204
    assert (await usage(client, owner))["used_bytes"] == 2 * len(BIG)
    assert (await upload(client, owner, BIG)).status_code == 201


async def test_concurrent_uploads_cannot_pass_the_quota(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    """Eight uploads at once, each seeing room when it starts: the locked check lets 3 in."""
    owner = await factory.account()
    statuses: list[int] = []

    async def one() -> None:
        response = await upload(client, owner, BIG)
        statuses.append(response.status_code)
        if response.status_code != 201:
            assert_envelope(response, 413, "storage_quota_exceeded")

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(one)
    assert sorted(statuses) == [201] * 3 + [413] * 5
    rows = await live_rows(app, owner.id)
    assert sum(row.size for row in rows) <= QUOTA_BYTES
    # The refused uploads left no object behind.
    assert await stored_keys(app) == {row.key for row in rows}
