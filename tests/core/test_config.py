from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from tests.support.settings import TEST_SECRET


def build(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "SECRET_KEY"),
        ({"secret_key": "short"}, "SECRET_KEY"),
        ({"secret_key": "changeme"}, "SECRET_KEY"),
        ({"secret_key": TEST_SECRET, "debug": True}, "DEBUG"),
        ({"secret_key": TEST_SECRET, "cors_origins": "*"}, "CORS"),
    ],
)
def test_production_refuses_unsafe_settings(values: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        build(environment="production", **values)


def test_production_with_safe_settings_hides_docs() -> None:
    settings = build(environment="production", secret_key=TEST_SECRET, cors_origins="*",
                     cors_allow_credentials=False)  # fmt: skip
    assert settings.show_docs is False
    assert build(environment="production", secret_key=TEST_SECRET, docs_enabled=True).show_docs


def test_comma_separated_lists_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert build().cors_origins == ["https://a.example", "https://b.example"]


def test_database_urls() -> None:
    assert build(app_data_dir=Path("/srv/data")).sqlalchemy_url == (
        "sqlite+aiosqlite:////srv/data/app.db"
    )
    assert build(database_url="postgresql://u:p@db/app").sqlalchemy_url == (
        "postgresql+asyncpg://u:p@db/app"
    )


def test_development_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    # A random key per process would log everyone out on restart and differ between workers.
    first = build(app_data_dir=tmp_path).signing_key()
    again = build(app_data_dir=tmp_path).signing_key()
    assert first == again
    assert len(first) >= 64
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert build(app_data_dir=tmp_path / "other").signing_key() != first


def test_empty_urls_mean_unset() -> None:
    settings = build(redis_url="", database_url=" ", sentry_dsn="")
    assert settings.redis_url is None
    assert settings.database_url is None
    assert settings.sentry_dsn is None
