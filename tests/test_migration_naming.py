"""`alembic revision` names a new migration like the ones in the repo: `NNNN_<slug>.py`, with
the next number (app/migrations/env.py numbers it; alembic.ini's file_template names it)."""

import re
import shutil
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path) -> tuple[Config, Path]:
    # A copy of the migrations, so the new file never lands in the repository.
    scripts = tmp_path / "migrations"
    shutil.copytree(
        ROOT / "app" / "migrations", scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{tmp_path / 'naming.db'}")
    return config, scripts / "versions"


def _numbers(versions: Path) -> list[int]:
    return sorted(int(path.name[:4]) for path in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))


def test_a_new_revision_gets_the_next_number(tmp_path: Path) -> None:
    config, versions = _config(tmp_path)
    highest = _numbers(versions)[-1]
    script = command.revision(config, message="add orders")
    assert script is not None
    assert not isinstance(script, list)
    expected = f"{highest + 1:04d}"
    assert Path(script.path).name == f"{expected}_add_orders.py"
    assert script.revision == expected
    assert re.search(rf"^revision: str = ['\"]{expected}['\"]", Path(script.path).read_text(), re.M)


def test_an_explicit_rev_id_is_kept(tmp_path: Path) -> None:
    config, _versions = _config(tmp_path)
    script = command.revision(config, message="orders", rev_id="0042")
    assert script is not None
    assert not isinstance(script, list)
    assert Path(script.path).name == "0042_orders.py"
