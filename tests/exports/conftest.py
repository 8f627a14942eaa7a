from pathlib import Path

import pytest

from app.core.config import Settings
from tests.support.settings import empty_postgres, make_settings

BATCH = 7  # small, so every export here spans several batches


@pytest.fixture
async def settings(database_url: str | None, tmp_path: Path) -> Settings:
    if database_url is not None:
        await empty_postgres(database_url)
    return make_settings(tmp_path, database_url, export_batch_size=BATCH)
