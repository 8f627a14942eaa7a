"""Upload helpers: file bodies, the stored-file rows and storage objects an upload leaves,
and the storage parametrization (local disk and a real moto S3, see tests/files/conftest.py).
"""

import os

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.files.models import StoredFile

__all__ = ["BOTH_STORAGES", "PNG", "S3_KEY_ID", "S3_SECRET", "rows", "stored_objects"]

# A PNG signature and enough bytes to span several upload chunks.
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300 * 1024)
S3_KEY_ID, S3_SECRET = "testing-key", "testing-secret"
# Runs a test on local storage and on S3 (the `storage_backend` fixture of tests/files).
BOTH_STORAGES = pytest.mark.parametrize("storage_backend", ["local", "s3"], indirect=True)


async def rows(app: FastAPI) -> list[StoredFile]:
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(StoredFile))).scalars().all())


async def stored_objects(app: FastAPI) -> list[str]:
    return [stored.key async for stored in app.state.services.storage.list_keys()]
