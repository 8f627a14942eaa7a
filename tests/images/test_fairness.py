"""Fairness of jobs (issue 13 item 7) on a real worker, both brokers: a user's hung upstream
holds at most USER_MAX_ACTIVE_URL_IMAGE_JOBS worker slots, so other users' image jobs run
meanwhile; a user past USER_MAX_ACTIVE_JOBS gets 429 until one of theirs finishes. And the
fetch's own bounds (connect/read per step, a total), against a local server that hangs."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from app.core.safe_fetch import FetchFailed, parse_networks, safe_fetch
from app.jobs.models import ACTIVE
from tests.images.helpers import image_bytes
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.processes import free_port
from tests.support.workers import JobsStack, wait_for_task

MAX_ACTIVE_JOBS = 3
MAX_FILES = 6  # room for what the tests below make, uploads and outputs
# What the test allows another user's job, start to finish, while the upstream hangs; the
# hang itself lasts until the test releases it (the fetch limits below are far longer).
OTHER_USER_BOUND_SECONDS = 15.0
HOLD_SECONDS = 90.0  # a hang's longest life, should a test die before releasing it
ARRIVAL_DEADLINE_SECONDS = 30.0


@pytest.fixture(scope="module")
def jobs_overrides() -> dict[str, str]:
    return {
        "SSRF_ALLOWED_NETWORKS": "127.0.0.1/32",
        "USER_MAX_ACTIVE_JOBS": str(MAX_ACTIVE_JOBS),
        "USER_MAX_ACTIVE_URL_IMAGE_JOBS": "1",
        # Longer than any test: only the test's release ends a hang.
        "IMAGE_FETCH_TIMEOUT_SECONDS": "100",
        "IMAGE_FETCH_READ_TIMEOUT_SECONDS": "100",
        "USER_MAX_FILES": str(MAX_FILES),
    }


@dataclass
class Hanging:
    """A server whose /hang requests get nothing until `release` is set; /image.png is fine."""

    port: int
    release: threading.Event = field(default_factory=threading.Event)
    arrivals: list[str] = field(default_factory=list)
    png: bytes = field(default_factory=image_bytes)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_arrivals(self, count: int) -> None:
        with anyio.move_on_after(ARRIVAL_DEADLINE_SECONDS):
            while len(self.arrivals) < count:
                await anyio.sleep(0.05)
            return
        raise AssertionError(f"{len(self.arrivals)} of {count} fetches reached the upstream")


def _handler(state: Hanging) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/image.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(state.png)))
                self.end_headers()
                self.wfile.write(state.png)
                return
            state.arrivals.append(self.path)
            release = state.release  # this test's: the fixture swaps it per test
            if self.path == "/stall-body":  # headers and a little, then silence
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"\x89PNG")
                self.wfile.flush()
            release.wait(HOLD_SECONDS)  # /hang: not a byte; then the connection just closes

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[Hanging]:
    state = Hanging(port=free_port())
    httpd = ThreadingHTTPServer(("127.0.0.1", state.port), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def hanging(server: Hanging) -> Iterator[Hanging]:
    server.release = threading.Event()
    server.arrivals.clear()
    try:
        yield server
    finally:
        server.release.set()


async def process(client: httpx.AsyncClient, owner: Account, **body: Any) -> httpx.Response:
    body.setdefault("operations", [{"op": "grayscale"}])
    return await client.post("/api/v1/images/process", json=body, headers=owner.headers)


async def started(client: httpx.AsyncClient, owner: Account, **body: Any) -> str:
    response = await process(client, owner, **body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def uploaded(client: httpx.AsyncClient, owner: Account) -> int:
    response = await client.post(
        "/api/v1/files", files={"file": ("a.png", image_bytes())}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    return file_id


def assert_too_many(response: httpx.Response, setting: str, limit: int) -> None:
    error = assert_envelope(response, 429, "too_many_active_jobs")
    assert response.headers["Retry-After"] == "5"
    assert setting in str(error["message"])
    details = {d["field"]: d["message"] for d in error["details"]}  # type: ignore[attr-defined]
    assert details == {"limit": str(limit), "retry_after": "5"}


async def test_a_hung_upstream_does_not_delay_another_users_image_jobs(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory, jobs_stack: JobsStack,
    hanging: Hanging,
) -> None:  # fmt: skip
    slow, other = await jobs_factory.account(), await jobs_factory.account()
    hung = await started(jobs_client, slow, url=hanging.url("/hang"))
    await hanging.wait_arrivals(1)  # it holds a worker slot now
    # A second hung URL would take the other slot: one URL job at a time per user.
    assert_too_many(
        await process(jobs_client, slow, url=hanging.url("/hang")),
        "USER_MAX_ACTIVE_URL_IMAGE_JOBS", 1,
    )  # fmt: skip

    began = time.monotonic()
    from_file = await started(jobs_client, other, file_id=await uploaded(jobs_client, other))
    from_url = await started(jobs_client, other, url=hanging.url("/image.png"))
    for task_id in (from_file, from_url):
        body = await wait_for_task(jobs_client, other.headers, task_id, stack=jobs_stack,
                                   deadline=OTHER_USER_BOUND_SECONDS)  # fmt: skip
        assert body["state"] == "SUCCESS", body
    assert time.monotonic() - began < OTHER_USER_BOUND_SECONDS

    hung_state = await jobs_client.get(f"/api/v1/tasks/{hung}", headers=slow.headers)
    assert hung_state.json()["state"] in ACTIVE  # still hanging all that time
    hanging.release.set()
    body = await wait_for_task(jobs_client, slow.headers, hung, stack=jobs_stack)
    assert body["state"] == "FAILURE"
    assert "The URL" in body["error"], body
    # Finished: the slot is the user's again.
    again = await started(jobs_client, slow, url=hanging.url("/image.png"))
    assert (await wait_for_task(jobs_client, slow.headers, again))["state"] == "SUCCESS"


async def test_active_jobs_are_capped_per_user_and_freed_on_completion(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory, jobs_stack: JobsStack,
    hanging: Hanging,
) -> None:  # fmt: skip
    owner, neighbour = await jobs_factory.account(), await jobs_factory.account()
    file_id = await uploaded(jobs_client, owner)
    # Both worker slots (concurrency 2) hang: the owner's next jobs stay queued (PENDING).
    tasks = [await started(jobs_client, owner, url=hanging.url("/hang"))]
    await started(jobs_client, neighbour, url=hanging.url("/hang"))
    await hanging.wait_arrivals(2)
    tasks += [await started(jobs_client, owner, file_id=file_id) for _ in range(2)]
    assert_too_many(
        await process(jobs_client, owner, file_id=file_id), "USER_MAX_ACTIVE_JOBS",
        MAX_ACTIVE_JOBS,
    )  # fmt: skip
    # The cap is per user: the neighbour still may.
    neighbour_file = await uploaded(jobs_client, neighbour)
    assert (await process(jobs_client, neighbour, file_id=neighbour_file)).status_code == 202

    hanging.release.set()
    for task_id in tasks:
        await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)
    accepted = await started(jobs_client, owner, file_id=file_id)
    assert (await wait_for_task(jobs_client, owner.headers, accepted))["state"] == "SUCCESS"


async def test_an_output_past_the_quota_fails_the_job_with_the_numbers(
    jobs_client: httpx.AsyncClient, jobs_factory: Factory, jobs_stack: JobsStack
) -> None:
    owner = await jobs_factory.account()
    file_ids = [await uploaded(jobs_client, owner) for _ in range(MAX_FILES)]
    task_id = await started(jobs_client, owner, file_id=file_ids[0])
    body = await wait_for_task(jobs_client, owner.headers, task_id, stack=jobs_stack)
    assert body["state"] == "FAILURE", body
    assert f"you have {MAX_FILES} of your {MAX_FILES} files" in body["error"], body
    usage = (await jobs_client.get("/api/v1/files/usage", headers=owner.headers)).json()
    assert usage["used_files"] == MAX_FILES  # the refused output left no row


@pytest.mark.parametrize(
    ("path", "message"),
    [("/hang", "did not answer in time"), ("/stall-body", "stopped sending")],
)
async def test_each_fetch_step_is_bounded(hanging: Hanging, path: str, message: str) -> None:
    began = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchFailed, match=message):
            await safe_fetch(
                client, hanging.url(path), max_bytes=10_000, time_limit=30,
                allowed_networks=parse_networks(["127.0.0.1/32"]),
                step_timeout=httpx.Timeout(0.5),
            )  # fmt: skip
    assert time.monotonic() - began < 5


async def test_the_whole_fetch_is_bounded(hanging: Hanging) -> None:
    began = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchFailed, match=r"within 0\.5 seconds"):
            await safe_fetch(
                client, hanging.url("/hang"), max_bytes=10_000, time_limit=0.5,
                allowed_networks=parse_networks(["127.0.0.1/32"]),
            )  # fmt: skip
    assert time.monotonic() - began < 5
