"""The live compose stack the container tests drive: its URLs, compose and docker commands."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.waiting import eventually

T = TypeVar("T")

# Bounds for the polling loops: generous for a loaded 2-core CI machine, short enough that a
# stuck stack fails the step well inside its budget.
HTTP_TIMEOUT = 15.0
JOB_TIMEOUT = 120.0
RECOVERY_TIMEOUT = 120.0
POLL_INTERVAL = 0.25


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through .ci/containers")
    return value


@dataclass(frozen=True)
class Stack:
    url: str  # https through nginx's published 443
    http_url: str  # plain http through nginx's published 80
    ca: str  # the throwaway CA that signed nginx's certificate
    compose_command: str  # wrapper: docker-compose with the stack's project, files and .env
    docker_command: str
    image: str  # the app image built from the real Dockerfile
    admin_user: str
    admin_password: str

    @classmethod
    def from_environment(cls) -> Stack:
        return cls(
            url=_env("APP_STACK_URL"),
            http_url=_env("APP_STACK_HTTP_URL"),
            ca=_env("APP_STACK_CA"),
            compose_command=_env("APP_STACK_COMPOSE"),
            docker_command=_env("APP_STACK_DOCKER"),
            image=_env("APP_STACK_IMAGE"),
            admin_user=_env("APP_STACK_ADMIN_USER"),
            admin_password=_env("APP_STACK_ADMIN_PASSWORD"),
        )

    def client(self, *, http2: bool = True) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.ca)
        return httpx.Client(base_url=self.url, verify=context, http2=http2, timeout=HTTP_TIMEOUT)

    def compose(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return _run([self.compose_command, *args], check=check, timeout=timeout)

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return _run([self.docker_command, *args], check=check, timeout=timeout)

    def container_id(self, service: str) -> str:
        ids = self.compose("ps", "-q", "--all", service).split()
        assert len(ids) == 1, f"expected one {service} container, got {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.docker("inspect", self.container_id(service)))
        return data[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return str(state.get("Health", {}).get("Status", "none"))

    def exec_python(self, service: str, code: str, *, check: bool = True) -> str:
        """Python in the running container (exec bypasses the `app` entrypoint)."""
        return self.compose("exec", "-T", service, "python", "-c", code, check=check)

    def run_python(self, code: str, *, user: str | None = None) -> str:
        """Python in a fresh container of the app image, as its own user unless told."""
        args = ["run", "--rm", "--network", "none", "--entrypoint", "python"]
        if user is not None:
            args += ["--user", user]
        return self.docker(*args, self.image, "-c", code)

    def wait_healthy(self, service: str, timeout: float = RECOVERY_TIMEOUT) -> None:
        wait_for(lambda: self.health(service) == "healthy", timeout, f"{service} healthy")


def _run(command: Sequence[str], *, check: bool, timeout: float) -> str:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    return eventually(condition, timeout=timeout, what=what, interval=POLL_INTERVAL)


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def queue_job(client: httpx.Client, token: str, kind: str) -> httpx.Response:
    """Start one job: a report (worker-media's queues) or a test mail (the worker's)."""
    if kind == "report":
        return client.post(
            "/api/v1/reports", json={"start": today(), "end": today()}, headers=bearer(token)
        )
    return client.post("/api/v1/email/test", headers=bearer(token))


def job_state(client: httpx.Client, token: str, task_id: str) -> str:
    response = client.get(f"/api/v1/tasks/{task_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return str(response.json()["state"])


def wait_jobs_succeed(client: httpx.Client, token: str, task_ids: Sequence[str]) -> None:
    """Every task reaches SUCCESS (a FAILURE or REVOKED fails at once, with its error)."""
    pending = set(task_ids)

    def all_succeeded() -> bool:
        for task_id in sorted(pending):
            response = client.get(f"/api/v1/tasks/{task_id}", headers=bearer(token))
            if response.status_code == 503:
                # A query the database restart cut off mid-statement answers "briefly
                # unavailable; try again" (connections closed while idle are replaced at
                # checkout, unseen): asked again, as a client is told to.
                return False
            assert response.status_code == 200, response.text
            task = response.json()
            if task["state"] == "SUCCESS":
                pending.discard(task_id)
            elif task["state"] in {"FAILURE", "REVOKED"}:
                pytest.fail(f"task {task_id} ended {task['state']}: {task}")  # not retried
        return not pending

    try:
        eventually(all_succeeded, timeout=JOB_TIMEOUT, interval=0.5, what="every task to succeed")
    except AssertionError as exc:
        states = {task_id: job_state(client, token, task_id) for task_id in pending}
        pytest.fail(f"{exc}; still pending: {states}")
