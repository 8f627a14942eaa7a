"""`.env.example` written from the Settings class (`app env-example > .env.example`): every
setting with its default and its docstring, so the file can't drift from the code (a test
compares them)."""

import re
from pathlib import Path
from typing import get_args

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from app.core.config import Settings

HEADER = """\
# Every setting of the service, with its default and what it does. Generated from
# app/core/config.py by `app env-example > .env.example`: don't edit by hand.
# Settings come from the environment or from a .env file in the working directory (the
# environment wins). A commented-out line is unset by default, computed at start, or a secret:
# never commit a real secret.
"""
# What .env readers (python-dotenv, Compose, a shell) all take unquoted.
_PLAIN = re.compile(r"[A-Za-z0-9_./:@*,+%-]*")


def render(settings_class: type[BaseSettings] = Settings) -> str:
    fields = settings_class.model_fields
    undocumented = [name for name, field in fields.items() if not field.description]
    if undocumented:
        raise ValueError(
            "settings without a docstring (a line on what they do): " + ", ".join(undocumented)
        )
    prefix = str(settings_class.model_config.get("env_prefix") or "").upper()
    blocks = []
    for name, field in fields.items():
        key = prefix + name.upper()
        description = " ".join(str(field.description).split())
        value = _value(field)
        line = f"# {key}=" if value is None else f"{key}={value}"
        blocks.append(f"# {description}\n{line}\n")
    return HEADER + "\n" + "\n".join(blocks)


def _value(field: FieldInfo) -> str | None:
    """The default as a .env value; None for a line left commented out."""
    secret = field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    if secret or field.default_factory is not None or field.default is None:
        return None
    default = field.default
    if isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, list):
        text = ",".join(str(item) for item in default)
    elif isinstance(default, Path) and not default.is_absolute():
        text = f"./{default.as_posix()}"
    else:
        text = str(default)
    if _PLAIN.fullmatch(text):
        return text
    if "'" in text:
        raise ValueError(f"cannot quote the default {text!r} for a .env file")
    return f"'{text}'"  # single quotes: no escapes and no ${} expansion in any reader
