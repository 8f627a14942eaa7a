"""The app image: who it runs as, its healthcheck, what it can write, what it carries."""

import json
from pathlib import Path

from tests.containers.stack import Stack

REPO = Path(__file__).resolve().parents[2]
API_SERVICES = ("api1", "api2")


def test_image_runs_as_a_numeric_non_root_user(stack: Stack) -> None:
    config = json.loads(stack.docker("image", "inspect", stack.image))[0]["Config"]
    user = str(config["User"])
    uid = user.split(":", maxsplit=1)[0]
    assert uid.isdigit(), f"USER must be numeric (Kubernetes runAsNonRoot checks it): {user!r}"
    assert int(uid) != 0
    assert config["Entrypoint"] == ["app"]
    for service in API_SERVICES:
        ids = stack.exec_python(service, "import os; print(os.getuid(), os.getgid())").split()
        assert ids[0] == uid, (service, ids)
        assert "0" not in ids, (service, ids)


def test_image_healthcheck_exists_and_passes(stack: Stack) -> None:
    config = json.loads(stack.docker("image", "inspect", stack.image))[0]["Config"]
    test = config.get("Healthcheck", {}).get("Test") or []
    assert test, "the image has no HEALTHCHECK"
    assert test[0] != "NONE"
    for service in API_SERVICES:
        state = stack.inspect(service)["State"]
        assert state["Health"]["Status"] == "healthy", state["Health"]
        assert state["Health"]["Log"][-1]["ExitCode"] == 0, state["Health"]["Log"][-1]


def test_root_filesystem_is_read_only_but_tmp_is_writable(stack: Stack) -> None:
    code = """
import errno, sys
for path in (sys.prefix + "/probe", "/probe", "/etc/probe"):
    try:
        open(path, "w").close()
    except OSError as exc:
        assert exc.errno in (errno.EROFS, errno.EACCES), (path, exc)
    else:
        raise SystemExit(f"wrote {path}")
open("/tmp/probe", "w").close()
print("ok")
"""
    for service in (*API_SERVICES, "worker", "worker-media", "beat"):
        assert stack.inspect(service)["HostConfig"]["ReadonlyRootfs"] is True, service
        assert stack.exec_python(service, code).strip() == "ok", service
        # cap_drop: [ALL] reaches the process: no effective capability at all.
        status = stack.exec_python(service, "print(open('/proc/self/status').read())")
        effective = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(effective.split()[1], 16) == 0, (service, effective)


def test_venv_is_root_owned_and_not_writable_by_the_app_user(stack: Stack) -> None:
    # A fresh container without compose's read_only: the permissions alone must stop the app
    # user from changing its own code.
    code = """
import os, sys
bad = []
for root, dirs, files in os.walk(sys.prefix):
    for name in [root, *(os.path.join(root, f) for f in files)]:
        if os.path.islink(name):
            continue
        if os.access(name, os.W_OK) or os.stat(name).st_uid == os.getuid():
            bad.append(name)
print(sys.prefix, len(bad), bad[:5])
"""
    prefix, count, *sample = stack.run_python(code).split(maxsplit=2)
    assert prefix != "/usr", "the app must run from its own virtual environment"
    assert count == "0", f"writable by the app user under {prefix}: {sample}"


def test_migrations_and_static_files_are_in_the_image(stack: Stack) -> None:
    code = """
from importlib.resources import files
versions = files("app") / "migrations" / "versions"
print(sorted(p.name for p in versions.iterdir() if p.name.endswith(".py")))
for asset in (files("fastapi_offline") / "static" / "swagger-ui-bundle.js",
              files("app") / "realtime" / "static" / "chat.js"):
    assert asset.is_file(), asset
"""
    inside = stack.run_python(code).strip()
    expected = sorted(p.name for p in (REPO / "app/migrations/versions").glob("*.py"))
    assert inside == str(expected)


def test_migrate_ran_once_and_succeeded(stack: Stack) -> None:
    state = stack.inspect("migrate")["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0


def test_every_service_is_up_and_healthy(stack: Stack) -> None:
    # `up --wait` checks this too; asserted here so that a stack which only became healthy
    # by luck (or a compose that let an unhealthy one through) fails with the full picture.
    services = [
        json.loads(line)
        for line in stack.compose("ps", "--all", "--format", "json").splitlines()
        if line.strip()
    ]
    states = {s["Service"]: (s["State"], s.get("Health", ""), s.get("ExitCode")) for s in services}
    assert states.pop("migrate")[::2] == ("exited", 0), states
    for service, (state, health, _) in states.items():
        assert (state, health) == ("running", "healthy"), (service, states)
    assert {
        "db",
        "redis",
        "cache",
        "api1",
        "api2",
        "worker",
        "worker-media",
        "beat",
        "nginx",
    } <= set(states)
