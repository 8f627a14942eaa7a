"""Through nginx's published ports, what a client of the real stack sees."""

import httpx

from tests.containers.stack import (
    Stack,
    bearer,
    login,
    queue_job,
    unique_name,
    wait_jobs_succeed,
)

# Each must appear exactly once: nginx and the app both setting one gives two (DEPLOY_NOTES 3).
SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)
MAYBE_SECURITY_HEADERS = (
    "content-security-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
)


def test_health_over_http2(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert response.http_version == "HTTP/2"
    assert response.headers.get("x-request-id")


def test_plain_http_redirects_to_https_with_308(stack: Stack) -> None:
    with httpx.Client(base_url=stack.http_url, timeout=10) as plain:
        response = plain.get("/api/v1/items/?page=2", follow_redirects=False)
    assert response.status_code == 308
    location = response.headers["location"]
    assert location.startswith("https://localhost"), location
    assert location.endswith("/api/v1/items/?page=2"), location


def test_register_login_and_me(client: httpx.Client) -> None:
    username = unique_name("user")
    password = "Correct-Horse-9-battery"
    created = client.post(
        "/api/v1/auth/register",
        json={
            "username": username,
            "email": f"{username}@example.com",
            "password": password,
            "password_confirm": password,
        },
    )
    assert created.status_code == 202, created.text
    token = login(client, username, password)
    me = client.get("/api/v1/users/me", headers=bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username


def test_each_security_header_exactly_once(client: httpx.Client) -> None:
    # An answer from the app, an error from the app, and one nginx serves itself (the docs
    # assets are the app's too, but a 404 under /api goes through the error path).
    for path in ("/health", "/api/v1/items/", "/api/v1/no-such-thing"):
        response = client.get(path)
        for name in SECURITY_HEADERS:
            values = response.headers.get_list(name)
            assert len(values) == 1, f"{path}: {name} = {values}"
        for name in MAYBE_SECURITY_HEADERS:
            values = response.headers.get_list(name)
            assert len(values) <= 1, f"{path}: {name} = {values}"
        assert "max-age=" in response.headers["strict-transport-security"]


def test_static_files_come_from_the_image(client: httpx.Client) -> None:
    page = client.get("/chat")
    assert page.status_code == 200, page.text
    script = client.get("/chat/chat.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    # Production turns the interactive docs off (their assets are checked in the image).
    assert client.get("/docs").status_code == 404


def test_metrics_not_exposed(client: httpx.Client) -> None:
    assert client.get("/metrics").status_code in {403, 404}


def test_jobs_complete_on_both_worker_groups(client: httpx.Client, admin_token: str) -> None:
    task_ids = []
    for kind in ("report", "email"):
        response = queue_job(client, admin_token, kind)
        assert response.status_code == 202, response.text
        task_ids.append(response.json()["task_id"])
    wait_jobs_succeed(client, admin_token, task_ids)
