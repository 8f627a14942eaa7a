"""Files' scheduled task (JOBS-6), sent by beat to the maintenance queue."""

import logging
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from app.files import service
from app.jobs.base import JobTask, job

logger = logging.getLogger(__name__)


@job("app.maintenance.purge_files", title="File purge")
def purge_files(task: JobTask) -> dict[str, Any]:
    """Unlinked files, objects without a row and stale temp files (as `app purge-files`).
    Idempotent: a re-delivery deletes nothing more."""
    runtime = task.runtime
    older_than = timedelta(hours=runtime.settings.purge_files_older_than_hours)
    report = task.in_session(
        lambda session: service.purge_orphans(
            session=session, storage=runtime.storage, older_than=older_than
        )
    )
    result = asdict(report)
    logger.info("purged files: %s", result)
    return result
