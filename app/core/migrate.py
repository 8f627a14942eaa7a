"""Apply Alembic migrations from code (the CLI and the tests use this)."""

from importlib.resources import files

from alembic import command
from alembic.config import Config

from app.core.config import Settings


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("app") / "migrations"))
    # ConfigParser would treat % in a password as interpolation.
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


def upgrade_to_head(settings: Settings) -> None:
    if settings.is_sqlite:
        settings.app_data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
