"""The real-container layer (issue 11): runs only from .ci/containers, against a live stack.

.ci/containers builds the images, brings the real compose.yaml up and describes the stack in
APP_STACK_* variables. Without them (a plain `uv run pytest`) nothing here is collected: the
layer needs a container engine that the normal suite does not start.
"""

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.containers.stack import Stack, login

collect_ignore_glob = [] if os.environ.get("APP_STACK_URL") else ["test_*.py"]


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack.from_environment()


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[httpx.Client]:
    """HTTP/2 through nginx, trusting only the stack's throwaway CA."""
    with stack.client() as client:
        yield client


@pytest.fixture(scope="session")
def admin_token(stack: Stack, client: httpx.Client) -> str:
    """The superuser .ci/containers created with `app create-superuser` (login is rate
    limited: once per session)."""
    return login(client, stack.admin_user, stack.admin_password)
