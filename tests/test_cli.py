"""The `app` command as a user runs it: real subprocesses, real ports."""

import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import APP, cli_env, run
from tests.support.processes import GroupProcess, free_port, http_ok
from tests.support.waiting import eventually


def counts(db: Path) -> tuple[int, int, list[str]]:
    with sqlite3.connect(db) as connection:
        users = connection.execute("SELECT count(*) FROM users").fetchone()[0]
        items = connection.execute("SELECT count(*) FROM items").fetchone()[0]
        roles = [r[0] for r in connection.execute("SELECT role FROM users WHERE role != 'user'")]
    return users, items, roles


def test_migrate_create_superuser_and_seed(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert run("migrate", env=env).returncode == 0
    created = run(
        "create-superuser", "--username", "admin", "--email", "root@example.com",
        "--password", "Root-password-1", env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "created" in created.stderr
    again = run(
        "create-superuser", "--username", "admin", "--email", "root@example.com",
        "--password", "Root-password-1", env=env,
    )  # fmt: skip
    assert "already exists" in again.stderr
    seeded = run("seed", "--users", "3", "--items", "7", env=env)
    assert seeded.returncode == 0, seeded.stderr
    assert counts(tmp_path / "app.db") == (4, 7, ["superuser"])


def test_superuser_from_settings_on_migrate(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        FIRST_SUPERUSER_USERNAME="boss",
        FIRST_SUPERUSER_EMAIL="boss@example.com",
        FIRST_SUPERUSER_PASSWORD="Boss-password-1",
    )
    assert run("migrate", env=env).returncode == 0
    assert counts(tmp_path / "app.db") == (1, 0, ["superuser"])


def test_create_superuser_refuses_weak_or_missing_password(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    missing = run("create-superuser", "--username", "a_b", "--email", "a@b.io", env=env)
    assert missing.returncode == 2
    weak = run(
        "create-superuser", "--username", "a_b", "--email", "a@b.io", "--password", "weak",
        env=env,
    )  # fmt: skip
    assert weak.returncode == 2
    assert "Cannot create the superuser" in weak.stderr


def test_production_refuses_a_weak_secret(tmp_path: Path) -> None:
    env = cli_env(tmp_path, ENVIRONMENT="production", SECRET_KEY="changeme")
    result = run("api", "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr


def start_serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`app serve` on a free port, its output in a file (read while it runs); waits for /health."""
    port = free_port()
    log = data_dir / "serve.log"
    serve = GroupProcess(
        [APP, "serve", "--port", str(port)], env=cli_env(data_dir), stdout=log, name="app serve"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        serve.wait_until(lambda: http_ok(f"{base}/health"), timeout=60, what="GET /health")
    except AssertionError as exc:
        serve.process.kill()
        serve.process.wait()
        pytest.fail(f"serve did not come up: {exc}")
    return serve.process, base, log


def child_pids(log: Path) -> dict[str, int]:
    found = re.findall(r"started (\w+) \(pid (\d+)\)", log.read_text())
    return {name: int(pid) for name, pid in found}


def stop_serve(process: subprocess.Popen[bytes], log: Path, sig: signal.Signals) -> None:
    """Stop it as a terminal (SIGINT) or `docker stop`/systemd (SIGTERM) would: the parent exits
    cleanly and nothing it started remains, pool processes included (each child leads its own
    process group, so an empty group proves it)."""
    children = child_pids(log)
    process.send_signal(sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    output = log.read_text()
    left = [pid for pid in children.values() if group_alive(pid)]
    for pid in left:  # a failing run must not leave them behind either
        os.killpg(pid, signal.SIGKILL)
    assert not left, output
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert sorted(children) == ["beat", "worker"], output


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    process, base, log = start_serve(tmp_path)
    try:
        yield base, tmp_path
    finally:
        stop_serve(process, log, signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_stops_its_worker_and_beat(tmp_path: Path, sig: signal.Signals) -> None:
    process, _, log = start_serve(tmp_path)

    def both_started() -> dict[str, int] | None:
        found = child_pids(log)
        return found if len(found) >= 2 else None

    children = eventually(both_started, timeout=60, what=f"the supervisor's log lines in {log}")
    for pid in children.values():
        os.kill(pid, 0)  # running now
    stop_serve(process, log, sig)


def test_serve_runs_a_worker_that_sends_the_welcome_mail(served: tuple[str, Path]) -> None:
    """No SMTP configured: the worker child writes the mail to the outbox directory."""
    base, data_dir = served
    with httpx.Client(base_url=base) as client:
        body = {"username": "mailed", "email": "mailed@example.com",
                "password": "Cli-password-1", "password_confirm": "Cli-password-1"}  # fmt: skip
        assert client.post("/api/v1/auth/register", json=body).status_code == 202
    outbox = data_dir / "outbox"
    mails = eventually(
        lambda: list(outbox.glob("*.eml")), timeout=60, what="a welcome mail from the worker"
    )
    mail = mails[0].read_text()
    assert "To: mailed@example.com" in mail


def test_serve_migrates_and_answers(served: tuple[str, Path]) -> None:
    base, data_dir = served
    with httpx.Client(base_url=base) as client:
        body = {"username": "cli_user", "email": "c@example.com", "password": "Cli-password-1",
                "password_confirm": "Cli-password-1"}  # fmt: skip
        assert client.post("/api/v1/auth/register", json=body).status_code == 202
        token = client.post(
            "/api/v1/auth/token", data={"username": "cli_user", "password": "Cli-password-1"}
        ).json()["access_token"]
        me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "cli_user"
        assert client.get("/health/ready").json()["status"] == "ok"
        assert client.get("/docs").status_code == 200
    assert (data_dir / "app.db").exists()
