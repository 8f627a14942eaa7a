"""Crashes and restarts of the real stack: a killed API comes back, a restarted Redis or
PostgreSQL loses no job and never turns into a 500 (503 while a dependency is down is right)."""

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.containers.stack import (
    RECOVERY_TIMEOUT,
    Stack,
    bearer,
    queue_job,
    wait_for,
    wait_jobs_succeed,
)

# What a client may see while a dependency restarts: success, or "try again" from the app.
# A 500 is a bug; a 502/504 from nginx means an API process fell over or hung.
ALLOWED_DURING_RESTART = {200, 202, 503}
LOAD_INTERVAL = 0.2  # one job and one read per interval: far below the 600/minute rate limit


@dataclass
class Load:
    """Queues jobs and reads /users/me in a loop until stopped, recording every answer."""

    stack: Stack
    token: str
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        kinds = ("report", "email")
        with self.stack.client() as client:
            n = 0
            while not self.stop.is_set():
                try:
                    job = queue_job(client, self.token, kinds[n % 2])
                    me = client.get("/api/v1/users/me", headers=bearer(self.token))
                except httpx.HTTPError as exc:  # nginx must keep answering, whatever is down
                    self.errors.append(repr(exc))
                else:
                    self.statuses[job.status_code] += 1
                    self.statuses[me.status_code] += 1
                    if job.status_code == 202:
                        self.accepted.append(job.json()["task_id"])
                    elif job.status_code != 503:
                        self.errors.append(f"queue: {job.status_code} {job.text[:300]}")
                    if me.status_code not in ALLOWED_DURING_RESTART:
                        self.errors.append(f"/users/me: {me.status_code} {me.text[:300]}")
                n += 1
                self.stop.wait(LOAD_INTERVAL)


def _main_process(container_pid: int) -> int:
    """The app's process: the child of the container's init (compose `init: true`), if any."""
    children = Path(f"/proc/{container_pid}/task/{container_pid}/children").read_text().split()
    return int(children[0]) if children else container_pid


def test_killed_api_process_comes_back_healthy(stack: Stack, client: httpx.Client) -> None:
    before = stack.inspect("api1")
    assert before["State"]["Health"]["Status"] == "healthy"
    # SIGKILL from the host, as the kernel's OOM killer would. (`docker kill` counts as a manual
    # stop, which a restart policy respects, so it would prove nothing.)
    os.kill(_main_process(before["State"]["Pid"]), signal.SIGKILL)
    # Meanwhile the other API answers every request through nginx.
    for _ in range(20):
        assert client.get("/health").status_code == 200
    wait_for(
        lambda: stack.inspect("api1")["RestartCount"] > before["RestartCount"],
        RECOVERY_TIMEOUT,
        "api1 to be restarted by its restart policy",
    )
    stack.wait_healthy("api1")


def _restart_under_load(stack: Stack, client: httpx.Client, token: str, service: str) -> None:
    before = []
    for kind in ("report", "email", "report", "email"):
        response = queue_job(client, token, kind)
        assert response.status_code == 202, response.text
        before.append(response.json()["task_id"])
    load = Load(stack, token)
    thread = threading.Thread(target=load.run, name=f"load-{service}", daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # some jobs queued while the dependency is still up
        stack.compose("restart", service)
        stack.wait_healthy(service)
        # Until the app has reconnected: the load queues jobs again after the restart.
        mark = len(load.accepted)
        wait_for(
            lambda: len(load.accepted) > mark + 1,
            RECOVERY_TIMEOUT,
            f"jobs to be accepted again after the {service} restart",
        )
    finally:
        load.stop.set()
        thread.join(timeout=30)
    assert not load.errors, f"during the {service} restart: {load.errors[:10]} ({load.statuses})"
    assert set(load.statuses) <= ALLOWED_DURING_RESTART, load.statuses
    wait_jobs_succeed(client, token, [*before, *load.accepted])


def test_redis_restart_loses_no_job(stack: Stack, client: httpx.Client, admin_token: str) -> None:
    _restart_under_load(stack, client, admin_token, "redis")


def test_postgres_restart_loses_no_job(
    stack: Stack, client: httpx.Client, admin_token: str
) -> None:
    _restart_under_load(stack, client, admin_token, "db")
