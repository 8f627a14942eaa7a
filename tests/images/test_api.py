"""POST /images/process and item image uploads, up to the queue (no worker: see
tests/images/test_tasks.py for the work itself). Both databases."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth.models import Role
from tests.images.helpers import image_bytes
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import BuildClient

GRAY = [{"op": "grayscale"}]


async def upload(client: httpx.AsyncClient, owner: Account, name: str, data: bytes) -> int:
    response = await client.post(
        "/api/v1/files", files={"file": (name, data)}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


async def process(client: httpx.AsyncClient, owner: Account, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/images/process", json=body, headers=owner.headers)


async def test_processing_your_image_is_accepted_as_a_task(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    file_id = await upload(client, owner, "a.png", image_bytes())
    response = await process(client, owner, file_id=file_id, operations=GRAY, format="webp")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "PENDING"
    assert accepted["status_url"] == f"/api/v1/tasks/{accepted['task_id']}"
    task = await client.get(accepted["status_url"], headers=owner.headers)
    assert task.json()["name"] == "app.images.process"


async def test_only_the_owner_may_process_a_file(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner, stranger = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    file_id = await upload(client, owner, "a.png", image_bytes())
    for other in (stranger, admin):
        refused = await process(client, other, file_id=file_id, operations=GRAY)
        assert_envelope(refused, 404, "not_found")
    assert_envelope(
        await process(client, owner, file_id=999_999, operations=GRAY), 404, "not_found"
    )
    text_id = await upload(client, owner, "notes.txt", b"plain words")
    assert_envelope(
        await process(client, owner, file_id=text_id, operations=GRAY), 415,
        "unsupported_media_type",
    )  # fmt: skip
    anonymous = await client.post("/api/v1/images/process", json={"file_id": file_id})
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"file_id": 1, "operations": [{"op": "explode"}]},
        {"file_id": 1, "operations": [{"op": "blur", "radius": 500}]},
        {"file_id": 1, "operations": [{"op": "resize", "width": 0}]},
        {"file_id": 1, "operations": GRAY * 21},
        {"file_id": 1, "url": "https://example.com/a.png", "operations": GRAY},
        {"operations": GRAY},
        {"url": "file:///etc/passwd", "operations": GRAY},
        {"url": "ftp://example.com/a.png", "operations": GRAY},
    ],
)
async def test_bad_requests_are_422(
    client: httpx.AsyncClient, factory: Factory, body: dict[str, Any]
) -> None:
    owner = await factory.account()
    error = assert_envelope(await process(client, owner, **body), 422, "validation_error")
    assert error["details"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/a.png", "loopback"),
        ("http://[::1]:8080/a.png", "loopback"),
        ("http://10.0.0.1/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://user:secret@example.com/a.png", None),
    ],
)
async def test_internal_literal_addresses_are_refused_at_once(
    client: httpx.AsyncClient, factory: Factory, url: str, reason: str | None
) -> None:
    owner = await factory.account()
    error = assert_envelope(await process(client, owner, url=url, operations=GRAY), 422,
                            "url_not_allowed")  # fmt: skip
    expected = (
        f"The URL points to a {reason} address, which is not allowed."
        if reason
        else "URLs with credentials are not fetched."
    )
    assert error["message"] == expected
    tasks = (await client.get("/api/v1/tasks/", headers=owner.headers)).json()
    assert tasks["total"] == 0  # nothing was queued


async def test_an_item_image_upload_queues_its_variants(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    item = await factory.item(owner)
    url = f"/api/v1/items/{item['id']}/images"
    added = await client.post(url, files={"file": ("a.png", image_bytes())}, headers=owner.headers)
    assert added.status_code == 201, added.text
    image = added.json()
    assert image["variants"] == []  # not made yet
    task = await client.get(f"/api/v1/tasks/{image['variants_task_id']}", headers=owner.headers)
    assert task.json()["name"] == "app.images.process"
    listed = (await client.get(url, headers=owner.headers)).json()
    assert listed[0]["variants_task_id"] == image["variants_task_id"]


@pytest.mark.parametrize("shared_state", [None])
async def test_an_item_image_upload_survives_a_queue_outage(
    build_client: BuildClient, tmp_path: Path
) -> None:
    # An embedded broker whose file can't be opened: down, and quick to say so.
    dead_broker = f"appsqla+sqlite:///{tmp_path}/missing-dir/broker.sqlite"
    async with build_client(celery_broker_url=dead_broker) as (app, client):
        owner = await Factory(client, app).account()
        item = await Factory(client, app).item(owner)
        added = await client.post(
            f"/api/v1/items/{item['id']}/images",
            files={"file": ("a.png", image_bytes())},
            headers=owner.headers,
        )
        assert added.status_code == 201, added.text
        assert added.json()["variants_task_id"] is None
        assert added.json()["variants"] == []
        file_id = await upload(client, owner, "b.png", image_bytes())
        refused = await process(client, owner, file_id=file_id, operations=GRAY)
        assert_envelope(refused, 503, "service_unavailable")  # asked for: it must say so
