"""Auth's scheduled task (JOBS-6), sent by beat to the maintenance queue."""

import logging
from datetime import timedelta
from typing import Any

from app.auth import service
from app.core.db import utcnow
from app.jobs.base import JobTask, job

logger = logging.getLogger(__name__)


@job("app.maintenance.purge_sessions", title="Session purge")
def purge_sessions(task: JobTask) -> dict[str, Any]:
    """Sessions that ended before the retention cutoff, with their refresh tokens. Idempotent.

    Revocation entries in the cache need no sweep: each is written with a TTL that outlives
    the longest access token (Redis expires them; the in-process cache is a bounded LRU).
    """
    cutoff = utcnow() - timedelta(days=task.runtime.settings.auth_session_retention_days)
    sessions = task.in_session(
        lambda session: service.purge_ended_sessions(session=session, ended_before=cutoff)
    )
    logger.info("purged %d ended sessions", sessions)
    return {"sessions": sessions}
