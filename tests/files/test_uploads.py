"""FILES-1 and FILES-2 through the API: uploads, downloads, ranges, names, types, owners."""

import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.auth.models import Role
from app.core.config import Settings
from app.core.storage import StorageUnavailable
from app.main import create_app
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import make_settings
from tests.support.uploads import BOTH_STORAGES, PNG, rows, stored_objects

ZIP = b"PK\x03\x04" + os.urandom(2048)
BOUNDARY = "test-boundary-7f3a"
KEY_PATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{32}$")


def multipart(filename: bytes, content: bytes, field: bytes = b"file") -> bytes:
    """A multipart body built by hand, so the server sees the filename bytes exactly."""
    return (
        f"--{BOUNDARY}\r\n".encode()
        + b'Content-Disposition: form-data; name="' + field + b'"; filename="' + filename + b'"\r\n'
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )  # fmt: skip


MULTIPART_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def upload(
    client: httpx.AsyncClient, account: Account, name: str, content: bytes
) -> httpx.Response:
    return await client.post(
        "/api/v1/files", files={"file": (name, content, "image/png")}, headers=account.headers
    )


def leftover_temp_files(settings: Settings) -> list[Path]:
    dirs = [settings.uploads_dir / ".tmp", settings.app_data_dir / "tmp"]
    return [path for d in dirs if d.exists() for path in d.iterdir()]


@BOTH_STORAGES
async def test_upload_then_download(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, settings: Settings
) -> None:
    owner = await factory.account()
    response = await upload(client, owner, "holiday photo.png", PNG)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == "holiday_photo.png"
    assert body["content_type"] == "image/png"
    assert body["size"] == len(PNG)
    assert body["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert body["owner_id"] == owner.id
    [row] = await rows(app)
    assert (row.id, row.sha256, row.size, row.owner_id) == (
        body["id"], body["sha256"], len(PNG), owner.id,
    )  # fmt: skip
    assert await stored_objects(app) == [row.key]
    assert KEY_PATH.match(row.key)

    content = await client.get(f"/api/v1/files/{body['id']}/content", headers=owner.headers)
    assert content.status_code == 200
    assert content.content == PNG
    assert content.headers["content-type"] == "image/png"
    assert content.headers["etag"] == f'"{body["sha256"]}"'
    assert content.headers["accept-ranges"] == "bytes"
    assert content.headers["content-disposition"] == (
        "attachment; filename=\"holiday_photo.png\"; filename*=UTF-8''holiday_photo.png"
    )
    assert leftover_temp_files(settings) == []


@BOTH_STORAGES
async def test_range_requests(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    file_id = (await upload(client, owner, "a.png", PNG)).json()["id"]
    url, size = f"/api/v1/files/{file_id}/content", len(PNG)

    async def get(range_value: str) -> httpx.Response:
        return await client.get(url, headers={**owner.headers, "Range": range_value})

    for range_value, start, end in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-10", size - 10, size - 1),
        (f"bytes=5-{size + 500}", 5, size - 1),
    ]:
        response = await get(range_value)
        assert response.status_code == 206, range_value
        assert response.content == PNG[start : end + 1]
        assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert response.headers["content-length"] == str(end - start + 1)

    for bad in (f"bytes={size}-", "bytes=10-5", "bytes=abc", "items=0-1", "bytes=-0"):
        refused = await get(bad)
        assert_envelope(refused, 416, "range_not_satisfiable")
        assert refused.headers["content-range"] == f"bytes */{size}"

    thousands = ",".join(f"{i}-{i}" for i in range(0, 6000, 2))
    for several in ("bytes=0-1,5-6", f"bytes={thousands}"):  # several ranges: answered whole
        response = await get(several)
        assert response.status_code == 200
        assert response.content == PNG


async def test_etag_gives_304(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    body = (await upload(client, owner, "a.png", PNG)).json()
    url = f"/api/v1/files/{body['id']}/content"
    etag = f'"{body["sha256"]}"'
    for match in (etag, f'"other", {etag}', f"W/{etag}"):
        response = await client.get(url, headers={**owner.headers, "If-None-Match": match})
        assert response.status_code == 304
        assert response.headers["etag"] == etag
        assert response.content == b""
    stale = await client.get(url, headers={**owner.headers, "If-None-Match": '"other"'})
    assert stale.status_code == 200


@pytest.mark.parametrize(
    ("raw_name", "expected"),
    [
        (b"../../etc/passwd.png", "passwd.png"),
        (b"/etc/passwd.png", "passwd.png"),
        (b"..\\..\\windows\\system32\\x.png", "x.png"),
        (b"a\x00b/../c.png", "c.png"),
        (b"evil\x00.png", "evil.png"),
        (b".hidden.png", "hidden.png"),
        (b"..png", "file.png"),
        ("写真 ü.png".encode(), "写真_ü.png"),
        (b"x" * 3000 + b".png", "x" * 196 + ".png"),
        (("é" * 300 + ".png").encode(), "é" * 98 + ".png"),
        (b'q"uote;.png', "q_uote.png"),
    ],
)
async def test_client_names_never_reach_a_path(
    client: httpx.AsyncClient,
    factory: Factory,
    app: FastAPI,
    settings: Settings,
    raw_name: bytes,
    expected: str,
) -> None:
    owner = await factory.account()
    raw_name = raw_name.replace(b'"', b'\\"')
    response = await client.post(
        "/api/v1/files", content=multipart(raw_name, PNG),
        headers={**owner.headers, **MULTIPART_TYPE},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == expected
    assert len(expected.encode()) <= 200
    [row] = await rows(app)
    assert KEY_PATH.match(row.key)
    written = [
        p.relative_to(settings.app_data_dir).as_posix()
        for p in settings.app_data_dir.rglob("*")
        # The database, the key and the embedded broker (sign-up queues a welcome mail).
        if p.is_file() and not p.name.startswith(("app.db", "celery-")) and p.name != "secret_key"
    ]
    assert written == [f"uploads/{row.key}"]  # nothing anywhere else
    disposition = (await client.get(
        f"/api/v1/files/{row.id}/content", headers=owner.headers
    )).headers["content-disposition"]  # fmt: skip
    assert disposition.isascii()
    assert "/" not in disposition.split("filename*=")[0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("evil.png", ZIP),  # a zip dressed as an image
        ("evil.pdf", PNG),
        ("evil.txt", b"\x00\x01binary"),
        ("evil.exe", b"MZ" + b"\x00" * 100),
        ("no-extension", PNG),
    ],
)
async def test_content_must_match_an_allowed_extension(
    client: httpx.AsyncClient,
    factory: Factory,
    app: FastAPI,
    settings: Settings,
    name: str,
    content: bytes,
) -> None:
    owner = await factory.account()
    assert_envelope(await upload(client, owner, name, content), 415, "unsupported_media_type")
    assert await rows(app) == []
    assert await stored_objects(app) == []
    assert leftover_temp_files(settings) == []


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        ("notes.txt", "Grüße, 日本\n".encode(), "text/plain; charset=utf-8"),
        ("data.csv", b"a,b\n1,2\n", "text/csv; charset=utf-8"),
        ("doc.pdf", b"%PDF-1.7\n...", "application/pdf"),
        ("photo.JPG", b"\xff\xd8\xff\xe0" + b"0" * 100, "image/jpeg"),
        ("anim.gif", b"GIF89a" + b"0" * 10, "image/gif"),
        ("pic.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("archive.zip", ZIP, "application/zip"),
    ],
)
async def test_allowed_types(
    client: httpx.AsyncClient, factory: Factory, name: str, content: bytes, content_type: str
) -> None:
    owner = await factory.account()
    response = await upload(client, owner, name, content)
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == content_type


async def test_bad_multipart_bodies(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    url = "/api/v1/files"
    not_multipart = await client.post(url, json={"file": "x"}, headers=owner.headers)
    assert_envelope(not_multipart, 415, "unsupported_media_type")
    no_file = await client.post(url, data={"other": "x"}, files={"x": ("a.png", PNG)},
                                headers=owner.headers)  # fmt: skip
    assert_envelope(no_file, 400, "bad_request")
    no_boundary = await client.post(
        url, content=b"xx", headers={**owner.headers, "Content-Type": "multipart/form-data"}
    )
    assert_envelope(no_boundary, 400, "bad_request")
    huge_name = await client.post(
        url, content=multipart(b"x" * 5000 + b".png", PNG),
        headers={**owner.headers, **MULTIPART_TYPE},
    )  # fmt: skip
    assert_envelope(huge_name, 400, "bad_request")  # the part header line is over 4 KiB
    unauthenticated = await client.post(url, files={"file": ("a.png", PNG)})
    assert_envelope(unauthenticated, 401, "unauthorized")


class CountingUpload:
    """A multipart upload of `total` bytes in 1 KiB chunks, counting what the server pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.chunks_read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head = multipart(b"big.png", b"").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.chunks_read += 1
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(self.total // 1024):
            self.chunks_read += 1
            yield b"x" * 1024
        yield f"\r\n--{BOUNDARY}--\r\n".encode()


@asynccontextmanager
async def small_app(
    sqlite_template: Path, tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Account]]:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    app = create_app(make_settings(tmp_path, None, **overrides))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield app, client, await Factory(client, app).account()


@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_upload_is_cut_off_early(
    sqlite_template: Path, tmp_path: Path, declared: bool
) -> None:
    cap = 64 * 1024
    async with small_app(sqlite_template, tmp_path, max_upload_bytes=cap) as (app, client, user):
        body = CountingUpload(total=4 * 1024 * 1024)
        headers = {**user.headers, **MULTIPART_TYPE}
        if declared:
            headers["Content-Length"] = str(4 * 1024 * 1024 + 200)
        response = await client.post("/api/v1/files", content=body, headers=headers)
        assert_envelope(response, 413, "payload_too_large")
        # 4096 chunks offered; the server stopped just past the 64 KiB cap (or before reading).
        assert body.chunks_read <= (1 if declared else cap // 1024 + 4)
        assert await rows(app) == []
        assert leftover_temp_files(app.state.services.settings) == []


async def test_uploads_have_their_own_cap_above_the_global_one(
    sqlite_template: Path, tmp_path: Path
) -> None:
    async with small_app(
        sqlite_template, tmp_path, max_request_body_bytes=4096, max_upload_bytes=1024 * 1024
    ) as (_, client, user):
        response = await upload(client, user, "a.png", PNG)  # 300 KiB, far over 4 KiB
        assert response.status_code == 201, response.text
        other = await client.post(
            "/api/v1/items/", content=b"x" * 8192, headers={**user.headers,
                                                            "Content-Type": "application/json"},
        )  # fmt: skip
        assert_envelope(other, 413, "payload_too_large")


async def test_only_owner_or_admin_see_a_file(client: httpx.AsyncClient, factory: Factory) -> None:
    owner, other = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    file_id = (await upload(client, owner, "a.png", PNG)).json()["id"]
    base = f"/api/v1/files/{file_id}"
    for path in (base, f"{base}/content", f"{base}/url"):
        assert_envelope(await client.get(path, headers=other.headers), 404, "not_found")
    assert_envelope(await client.delete(base, headers=other.headers), 404, "not_found")
    assert_envelope(await client.get(f"{base}/content"), 401, "unauthorized")
    missing = await client.get("/api/v1/files/999999", headers=owner.headers)
    assert_envelope(missing, 404, "not_found")
    by_admin = await client.get(f"{base}/content", headers=admin.headers)
    assert by_admin.status_code == 200
    assert by_admin.content == PNG


@BOTH_STORAGES
async def test_delete_removes_row_and_object(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    file_id = (await upload(client, owner, "a.png", PNG)).json()["id"]
    assert len(await stored_objects(app)) == 1
    response = await client.delete(f"/api/v1/files/{file_id}", headers=owner.headers)
    assert response.status_code == 204
    assert await rows(app) == []
    assert await stored_objects(app) == []
    gone = await client.get(f"/api/v1/files/{file_id}", headers=owner.headers)
    assert_envelope(gone, 404, "not_found")


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_presigned_url_works_against_s3(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    file_id = (await upload(client, owner, "résumé.png", PNG)).json()["id"]
    answer = await client.get(f"/api/v1/files/{file_id}/url", headers=owner.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_in"] == 300
    async with httpx.AsyncClient() as outside:
        fetched = await outside.get(answer.json()["url"])
    assert fetched.status_code == 200
    assert fetched.content == PNG
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.png" in fetched.headers["content-disposition"]


async def test_presign_on_local_storage_is_409(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    file_id = (await upload(client, owner, "a.png", PNG)).json()["id"]
    answer = await client.get(f"/api/v1/files/{file_id}/url", headers=owner.headers)
    assert_envelope(answer, 409, "conflict")


async def test_disk_full_is_507_and_leaves_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    app: FastAPI,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await factory.account()

    def no_space(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "move", no_space)
    assert_envelope(await upload(client, owner, "a.png", PNG), 507, "insufficient_storage")
    assert await rows(app) == []
    assert await stored_objects(app) == []
    assert leftover_temp_files(settings) == []


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_storage_outage_is_503_and_leaves_nothing(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, settings: Settings
) -> None:
    owner = await factory.account()
    app.state.services.storage.bucket = "no-such-bucket"
    assert_envelope(await upload(client, owner, "a.png", PNG), 503, "service_unavailable")
    assert await rows(app) == []
    assert leftover_temp_files(settings) == []


async def test_a_failed_row_removes_its_object(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await factory.account()
    from sqlalchemy.ext.asyncio import AsyncSession

    async def broken_commit(self: AsyncSession) -> None:
        raise StorageUnavailable("database went away")

    monkeypatch.setattr(AsyncSession, "commit", broken_commit)
    assert_envelope(await upload(client, owner, "a.png", PNG), 503, "service_unavailable")
    monkeypatch.undo()
    assert await rows(app) == []
    assert await stored_objects(app) == []


@BOTH_STORAGES
async def test_readiness_reports_storage(client: httpx.AsyncClient, app: FastAPI) -> None:
    ready = (await client.get("/health/ready")).json()
    assert ready["checks"]["storage"]["status"] == "ok"
    if app.state.services.settings.storage_backend == "s3":
        app.state.services.storage.bucket = "no-such-bucket"
        degraded = await client.get("/health/ready")
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["checks"]["storage"]["status"] == "down"
