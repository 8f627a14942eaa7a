"""Files' task against a real worker on both brokers: the file purge, run by name as beat
sends it (JOBS-6)."""

import os
import time
import uuid
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import select

from app.core.db import utcnow
from app.core.storage import new_key
from app.files.models import StoredFile
from tests.support.factories import Factory
from tests.support.workers import JobsStack, run_by_name


async def test_purge_files_removes_unlinked_rows_orphans_and_stale_temp_files(
    jobs_stack: JobsStack, jobs_app: FastAPI, jobs_factory: Factory
) -> None:
    user = await jobs_factory.account()
    storage_dir = jobs_stack.settings.uploads_dir
    old = time.time() - (jobs_stack.settings.purge_files_older_than_hours + 1) * 3600
    orphan, unlinked, kept = new_key(), new_key(), new_key()
    for key in (orphan, unlinked, kept):
        path = storage_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    temp = storage_dir / ".tmp" / uuid.uuid4().hex
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"partial upload")
    os.utime(temp, (old, old))
    async with jobs_app.state.services.sessionmaker() as session:
        for key, deleted_at in ((unlinked, utcnow() - timedelta(days=2)), (kept, None)):
            session.add(
                StoredFile(
                    key=key,
                    filename="a.png",
                    content_type="image/png",
                    size=1,
                    sha256="0" * 64,
                    owner_id=user.id,
                    deleted_at=deleted_at,
                )
            )
        await session.commit()

    job = await run_by_name(jobs_app, jobs_stack, "app.maintenance.purge_files")

    assert job.state == "SUCCESS", job.error
    assert job.result is not None
    assert job.result["unlinked_rows"] >= 1
    assert job.result["orphan_objects"] >= 1
    assert job.result["temp_files"] >= 1
    assert not (storage_dir / orphan).exists()
    assert not (storage_dir / unlinked).exists()
    assert not temp.exists()
    assert (storage_dir / kept).exists()
    async with jobs_app.state.services.sessionmaker() as session:
        keys = set((await session.execute(select(StoredFile.key))).scalars())
    assert kept in keys
    assert unlinked not in keys
