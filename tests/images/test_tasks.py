"""Image processing on a real worker, both brokers (JOBS-4, ITEMS-4): outputs opened with
Pillow, PROGRESS seen through the task API, owners only, SSRF refused, bombs refused, cancel."""

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import select

from app.files.models import StoredFile
from app.images.schemas import ProcessJob, VariantSpec
from app.images.service import PROCESS_TASK
from tests.images.helpers import Upstream, image_bytes, open_image, serving
from tests.support.factories import Account, Factory
from tests.support.workers import JobsStack, wait_for_task

MAX_PIXELS = 20_000_000


@pytest.fixture(scope="module")
def jobs_overrides() -> dict[str, str]:
    # 127.0.0.2 plays the intranet an operator opened; 127.0.0.1 stays refused.
    return {
        "SSRF_ALLOWED_NETWORKS": "127.0.0.2/32",
        "IMAGE_MAX_PIXELS": str(MAX_PIXELS),
        # Several URL jobs of one user at once; the caps have their own tests (test_fairness).
        "USER_MAX_ACTIVE_JOBS": "20",
        "USER_MAX_ACTIVE_URL_IMAGE_JOBS": "20",
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serving("127.0.0.1", "127.0.0.2") as server:
        yield server


async def upload(
    client: httpx.AsyncClient, owner: Account, data: bytes, name: str = "a.png"
) -> int:
    response = await client.post("/api/v1/files", files={"file": (name, data)},
                                 headers=owner.headers)  # fmt: skip
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


async def start(client: httpx.AsyncClient, owner: Account, **body: Any) -> str:
    response = await client.post("/api/v1/images/process", json=body, headers=owner.headers)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def download(client: httpx.AsyncClient, owner: Account, url: str) -> Image.Image:
    response = await client.get(url, headers=owner.headers)
    assert response.status_code == 200, response.text
    return open_image(response.content)


async def test_an_uploaded_image_is_processed_and_linked_to_its_source(
    jobs_stack: JobsStack, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner, stranger = await jobs_factory.account(), await jobs_factory.account()
    source = await upload(jobs_client, owner, image_bytes(120, 80))
    operations = [{"op": "resize", "width": 60}, {"op": "rotate", "degrees": 90},
                  {"op": "grayscale"}, {"op": "sharpen"}]  # fmt: skip
    task_id = await start(jobs_client, owner, file_id=source, operations=operations,
                          format="png", variant="gray")  # fmt: skip

    task = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    assert task["state"] == "SUCCESS", task
    assert task["progress"] == {"current": 6, "total": 7, "status": "gray: saving"}
    [output] = task["result"]["outputs"]
    assert (output["variant"], output["width"], output["height"]) == ("gray", 40, 60)
    assert output["content_type"] == "image/png"
    image = await download(jobs_client, owner, output["download_url"])
    assert (image.format, image.size, image.mode) == ("PNG", (40, 60), "L")
    made = await jobs_client.get(f"/api/v1/files/{output['file_id']}", headers=owner.headers)
    assert (made.json()["source_file_id"], made.json()["variant"]) == (source, "gray")
    read = (await jobs_client.get(f"/api/v1/files/{source}", headers=owner.headers)).json()
    assert [(v["file_id"], v["width"], v["height"]) for v in read["variants"]] == [
        (output["file_id"], 40, 60)
    ]
    # Someone else sees neither the task nor its output.
    for url in (f"/api/v1/tasks/{task_id}", f"/api/v1/files/{output['file_id']}",
                output["download_url"]):  # fmt: skip
        hidden = await jobs_client.get(url, headers=stranger.headers)
        assert hidden.status_code == 404, url


async def test_item_images_get_their_variants(
    jobs_stack: JobsStack, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    item = await jobs_factory.item(owner)
    url = f"/api/v1/items/{item['id']}/images"
    exif = Image.Exif()
    exif[0x0112] = 6  # shot upright: the variants must come out 1000 wide, 2000 high
    photo = image_bytes(2000, 1000, fmt="JPEG", exif=exif)
    added = await jobs_client.post(url, files={"file": ("p.jpg", photo)}, headers=owner.headers)
    assert added.status_code == 201, added.text
    task_id = added.json()["variants_task_id"]

    task = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    assert task["state"] == "SUCCESS", task
    [image] = (await jobs_client.get(url, headers=owner.headers)).json()  # variants not listed
    variants = {v["variant"]: v for v in image["variants"]}
    assert set(variants) == {"thumbnail", "medium"}
    for name, size in (("thumbnail", (128, 256)), ("medium", (512, 1024))):
        variant = variants[name]
        assert (variant["width"], variant["height"], variant["content_type"]) == (
            *size, "image/webp",
        )  # fmt: skip
        opened = await download(jobs_client, owner, variant["download_url"])
        assert (opened.format, opened.size) == ("WEBP", size)


async def test_a_url_on_an_allowed_network_is_fetched(
    jobs_stack: JobsStack,
    jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
    upstream: Upstream,
) -> None:
    owner = await jobs_factory.account()
    task_id = await start(jobs_client, owner, url=upstream.url("127.0.0.2", "/image.png"),
                          operations=[{"op": "thumbnail", "size": 40}])  # fmt: skip
    task = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)
    assert task["state"] == "SUCCESS", task
    [output] = task["result"]["outputs"]
    assert (await download(jobs_client, owner, output["download_url"])).size == (40, 30)
    made = await jobs_client.get(f"/api/v1/files/{output['file_id']}", headers=owner.headers)
    assert made.json()["source_file_id"] is None  # a URL has no source file


async def test_ssrf_attempts_fail_with_a_safe_error(
    jobs_stack: JobsStack,
    jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
    upstream: Upstream,
) -> None:
    owner = await jobs_factory.account()
    loopback = upstream.url("127.0.0.1", "/image.png")
    via_api = [
        upstream.url("127.0.0.2", f"/redirect?to={loopback}"),  # allowed first hop
        f"http://localhost:{upstream.port}/image.png",  # loopback through DNS
    ]
    task_ids = [
        await start(jobs_client, owner, url=url, operations=[{"op": "grayscale"}])
        for url in via_api
    ]
    # The API refuses literal addresses at once (tests/images/test_api.py); the worker must
    # refuse them too, whoever put the message on the queue.
    for url in ("http://127.0.0.1/", "http://169.254.169.254/latest/", "http://[::1]/",
                "http://10.0.0.1/", "file:///etc/passwd"):  # fmt: skip
        job = ProcessJob(owner_id=owner.id, url=url, variants=[VariantSpec.model_validate(
            {"operations": [{"op": "grayscale"}]})])  # fmt: skip
        async with jobs_app.state.services.sessionmaker() as session:
            queued = await jobs_app.state.jobs.enqueue(
                session, PROCESS_TASK, job.model_dump(mode="json"), owner_id=owner.id
            )
        task_ids.append(queued.id)
    errors = [
        (await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack))["error"]
        for task_id in task_ids
    ]
    refused = "The URL points to a {} address, which is not allowed."
    assert errors == [
        refused.format("loopback"), refused.format("loopback"), refused.format("loopback"),
        refused.format("cloud metadata"), refused.format("loopback"), refused.format("private"),
        "Only http and https URLs can be fetched.",
    ]  # fmt: skip
    assert not [p for h, p in upstream.requests if h.startswith(("127.0.0.1", "localhost"))]


async def test_bombs_and_non_images_fail_with_a_safe_error(
    jobs_stack: JobsStack, jobs_client: httpx.AsyncClient, jobs_factory: Factory
) -> None:
    owner = await jobs_factory.account()
    buffer = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buffer, format="PNG")  # 36M pixels in a small file
    bomb = await upload(jobs_client, owner, buffer.getvalue())
    fake = await upload(jobs_client, owner, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "fake.png")
    errors = []
    for file_id in (bomb, fake):
        task_id = await start(jobs_client, owner, file_id=file_id, operations=[{"op": "sharpen"}])
        task = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)
        assert task["state"] == "FAILURE"
        errors.append(task["error"])
    assert errors == [
        f"The image is too large: at most {MAX_PIXELS} pixels are processed.",
        "The source is not a readable JPEG, PNG, WEBP or GIF image.",
    ]


async def test_a_running_task_can_be_cancelled(
    jobs_stack: JobsStack,
    jobs_app: FastAPI,
    jobs_client: httpx.AsyncClient,
    jobs_factory: Factory,
) -> None:
    owner = await jobs_factory.account()
    source = await upload(jobs_client, owner, image_bytes(4000, 4000))
    heavy = [{"op": "blur", "radius": 40}, {"op": "sharpen"}] * 10  # seconds of work
    task_id = await start(jobs_client, owner, file_id=source, operations=heavy)

    running = await wait_for_task(jobs_client, owner.headers, task_id,
                                  until=frozenset({"PROGRESS"}), stack=jobs_stack)  # fmt: skip
    assert running["progress"]["total"] == 23
    cancel = await jobs_client.delete(f"/api/v1/tasks/{task_id}", headers=owner.headers)
    assert cancel.status_code == 202
    task = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)

    assert task["state"] == "REVOKED", task
    assert task["progress"]["current"] < task["progress"]["total"]
    async with jobs_app.state.services.sessionmaker() as session:
        outputs = await session.execute(
            select(StoredFile.id).where(StoredFile.source_file_id == source)
        )
        assert outputs.all() == []
