""".env.example is what `app env-example` prints from the Settings class: a setting added
without regenerating the file (or without a docstring) fails here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values
from pydantic import SecretStr

from app.core.config import Settings
from app.core.env_example import render

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
APP = str(Path(sys.executable).parent / "app")
REGENERATE = "regenerate it: `app env-example > .env.example`"


def test_env_example_is_current() -> None:
    assert ENV_EXAMPLE.read_text(encoding="utf-8") == render(), REGENERATE


def test_the_command_prints_it(tmp_path: Path) -> None:
    # From another directory, with a .env there that isn't even valid: the command reads no
    # settings, it describes them.
    (tmp_path / ".env").write_text("DATABASE_POOL_SIZE=not-a-number\n")
    printed = subprocess.run(
        [APP, "env-example"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert printed.stdout == ENV_EXAMPLE.read_text(encoding="utf-8")


def test_every_setting_is_there_once_with_its_description() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for name, field in Settings.model_fields.items():
        key = name.upper()
        at = [n for n, line in enumerate(lines) if line.removeprefix("# ").startswith(f"{key}=")]
        assert len(at) == 1, f"{key}: {REGENERATE}"
        assert lines[at[0] - 1] == "# " + " ".join(str(field.description).split())


def test_loading_it_gives_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied to .env unchanged, the file changes nothing: each value parses back to its
    default (quoting included), and what it leaves commented out is unset by default."""
    for key in os.environ:
        if key.lower() in Settings.model_fields:
            monkeypatch.delenv(key)
    values = dotenv_values(ENV_EXAMPLE)
    assert values, "nothing parsed"
    from_file = Settings(_env_file=ENV_EXAMPLE)
    defaults = Settings(_env_file=None)
    assert from_file == defaults
    for name, field in Settings.model_fields.items():
        if name.upper() not in values:
            assert field.default is None or field.default_factory is not None, name


def test_secrets_are_commented_out_and_empty() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    secrets = [
        name.upper()
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    ]
    assert "SECRET_KEY" in secrets
    assert "SMTP_PASSWORD" in secrets
    for key in secrets:
        assert f"\n# {key}=\n" in text, key
        assert f"\n{key}=" not in text, key


def test_a_setting_without_a_docstring_is_refused() -> None:
    class Later(Settings):
        undocumented_knob: str | None = None

    with pytest.raises(ValueError, match="undocumented_knob"):
        render(Later)
