"""ITEMS-4 uploads, their soft-deleted links, and the orphan purge (service and CLI)."""

import shutil
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.auth.models import Role
from app.core.storage import LocalStorage, new_key
from app.files.service import PurgeReport, purge_orphans
from tests.support.assertions import assert_envelope
from tests.support.cli import cli_env, run
from tests.support.factories import Factory
from tests.support.uploads import BOTH_STORAGES, PNG, rows, stored_objects


async def test_owner_attaches_images_to_an_item(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    item = await factory.item(owner)
    url = f"/api/v1/items/{item['id']}/images"
    added = await client.post(url, files={"file": ("a.png", PNG)}, headers=owner.headers)
    assert added.status_code == 201, added.text
    assert (added.json()["item_id"], added.json()["owner_id"]) == (item["id"], owner.id)
    refused = await client.post(url, files={"file": ("a.png", PNG)}, headers=other.headers)
    assert_envelope(refused, 403, "forbidden")
    pdf = await client.post(url, files={"file": ("a.pdf", b"%PDF-1.4")}, headers=owner.headers)
    assert_envelope(pdf, 415, "unsupported_media_type")  # images only
    by_admin = await client.post(url, files={"file": ("b.png", PNG)}, headers=admin.headers)
    assert by_admin.json()["owner_id"] == owner.id  # the item's owner keeps access
    listed = await client.get(url, headers=owner.headers)
    assert [f["filename"] for f in listed.json()] == ["a.png", "b.png"]
    missing = "/api/v1/items/999999/images"
    assert_envelope(
        await client.post(missing, files={"file": ("a.png", PNG)}, headers=owner.headers),
        404, "not_found",
    )  # fmt: skip


@BOTH_STORAGES
async def test_deleted_items_lose_their_images_and_the_purge_removes_them(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, tmp_path: Path
) -> None:
    owner = await factory.account()
    item, kept = await factory.item(owner), await factory.item(owner)
    image = (await client.post(
        f"/api/v1/items/{item['id']}/images", files={"file": ("a.png", PNG)},
        headers=owner.headers,
    )).json()  # fmt: skip
    kept_image = (await client.post(
        f"/api/v1/items/{kept['id']}/images", files={"file": ("k.png", PNG)},
        headers=owner.headers,
    )).json()  # fmt: skip
    assert (await client.delete(f"/api/v1/items/{item['id']}", headers=owner.headers)).is_success
    gone = await client.get(f"/api/v1/files/{image['id']}", headers=owner.headers)
    assert_envelope(gone, 404, "not_found")
    assert len(await stored_objects(app)) == 2  # unlinked, not yet purged

    storage = app.state.services.storage
    orphan = tmp_path / "orphan"
    orphan.write_bytes(b"left by a crash between object and row")
    await storage.put(new_key(), orphan, content_type="image/png")

    stale_temp = storage.temp_path()
    stale_temp.write_bytes(b"spooled by a process that was killed")
    hard = await factory.item(owner)  # a hard delete takes the rows with it: orphan objects
    await client.post(f"/api/v1/items/{hard['id']}/images", files={"file": ("h.png", PNG)},
                      headers=owner.headers)  # fmt: skip
    admin = await factory.account(Role.ADMIN)
    gone_hard = await client.delete(f"/api/v1/items/{hard['id']}?hard=true", headers=admin.headers)
    assert gone_hard.status_code == 204
    assert len(await rows(app)) == 2

    async with app.state.services.sessionmaker() as session:
        hour = timedelta(hours=1)
        recent = await purge_orphans(session=session, storage=storage, older_than=hour)
        assert recent == PurgeReport(0, 0, 0)  # too recent to touch
        report = await purge_orphans(session=session, storage=storage, older_than=timedelta(0))
    assert report == PurgeReport(unlinked_rows=1, orphan_objects=2, temp_files=1)
    assert not stale_temp.exists()
    remaining = await rows(app)
    assert [r.id for r in remaining] == [kept_image["id"]]
    assert await stored_objects(app) == [remaining[0].key]


async def test_purge_files_command(tmp_path: Path, sqlite_template: Path) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    storage = LocalStorage(tmp_path / "uploads")
    orphan = storage.temp_path()
    orphan.write_bytes(b"orphan")
    await storage.put(new_key(), orphan, content_type="text/plain")
    env = cli_env(tmp_path)
    kept = run("purge-files", env=env)
    assert kept.returncode == 0, kept.stderr
    assert "0 orphan objects" in kept.stderr
    purged = run("purge-files", "--older-than-hours", "0", env=env)
    assert purged.returncode == 0, purged.stderr
    assert "1 orphan objects" in purged.stderr
    assert [key async for key in storage.list_keys()] == []
