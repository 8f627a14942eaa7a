"""Sentry patches libraries globally when it starts, so it is tried in a separate process."""

import json
import os
import subprocess
import sys
from pathlib import Path

from app.core.sentry import init_sentry
from tests.support.settings import make_settings

PROBE = """
import json, sentry_sdk
from app.core.config import Settings
from app.core.sentry import init_sentry
enabled = init_sentry(Settings(_env_file=None))
options = sentry_sdk.get_client().options
print(json.dumps({"enabled": enabled, "active": sentry_sdk.get_client().is_active(),
                  "collection": options["data_collection"], "environment": options["environment"]}))
"""


def test_no_dsn_no_sentry(tmp_path: Path) -> None:
    assert init_sentry(make_settings(tmp_path)) is False


def test_dsn_turns_sentry_on_without_personal_data(tmp_path: Path) -> None:
    # A DSN pointing at a closed local port: nothing is sent unless an event is captured.
    env = {**os.environ, "SENTRY_DSN": "http://public@127.0.0.1:9/1", "ENVIRONMENT": "test",
           "APP_DATA_DIR": str(tmp_path)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
        timeout=60,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["enabled"] is True
    assert report["active"] is True
    assert report["environment"] == "test"
    assert report["collection"]["user_info"] is False
    assert report["collection"]["stack_frame_variables"] is False


def test_dsn_without_the_sdk_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sentry_dsn="http://public@127.0.0.1:9/1")
    code = "import sys; sys.modules['sentry_sdk'] = None\n" + (
        "from app.core.config import Settings\nfrom app.core.sentry import init_sentry\n"
        "init_sentry(Settings(_env_file=None))"
    )
    env = {**os.environ, "SENTRY_DSN": settings.sentry_dsn.get_secret_value()}  # type: ignore[union-attr]
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "uv sync --extra sentry" in result.stderr
