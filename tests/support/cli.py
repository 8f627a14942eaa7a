"""The `app` command run as a user runs it: its path, a clean environment, one run."""

import os
import subprocess
import sys
from pathlib import Path

from tests.support.settings import TEST_SECRET

__all__ = ["APP", "cli_env", "run"]

APP = str(Path(sys.executable).parent / "app")


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "FIRST_"))}
    env.update({"APP_DATA_DIR": str(data_dir), "SECRET_KEY": TEST_SECRET, **extra})
    return env


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APP, *args], env=env, capture_output=True, text=True, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
