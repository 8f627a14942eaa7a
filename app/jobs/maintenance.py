"""Scheduled maintenance (JOBS-6), sent by beat to the maintenance queue.

Each task is idempotent: running one twice (a re-delivery after a crash) deletes nothing
more than running it once would.
"""

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, or_

from app.auth.models import AuthSession
from app.core.db import utcnow
from app.files.service import purge_orphans
from app.jobs import heartbeat as heartbeats
from app.jobs.base import JobTask, job
from app.jobs.models import FINISHED, Job

logger = logging.getLogger("app.jobs.maintenance")


# Untracked: one every HEARTBEAT_INTERVAL_SECONDS would flood the jobs table.
@job("app.maintenance.heartbeat", tracked=False)
def heartbeat(task: JobTask) -> None:
    async def beat() -> None:
        async with task.runtime.sessionmaker() as session:
            await heartbeats.record(session, f"{socket.gethostname()}:{os.getpid()}")

    task.run_async(beat())


@job("app.maintenance.purge_sessions")
def purge_sessions(task: JobTask) -> dict[str, Any]:
    """Sessions that ended (expired, or revoked) before the retention cutoff, with their
    refresh tokens (by cascade). Tokens of a deleted session are refused like revoked ones.

    Revocation entries in the cache need no sweep: each is written with a TTL that outlives
    the longest access token (Redis expires them; the in-process cache is a bounded LRU).
    """

    async def purge() -> int:
        retention = timedelta(days=task.runtime.settings.auth_session_retention_days)
        cutoff = utcnow() - retention
        async with task.runtime.sessionmaker() as session:
            result = await session.execute(
                delete(AuthSession).where(
                    or_(AuthSession.expires_at < cutoff, AuthSession.revoked_at < cutoff)
                )
            )
            await session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    sessions = task.run_async(purge())
    logger.info("purged %d ended sessions", sessions)
    return {"sessions": sessions}


@job("app.maintenance.purge_files")
def purge_files(task: JobTask) -> dict[str, Any]:
    """Unlinked files, objects without a row and stale temp files (as `app purge-files`)."""

    async def purge() -> dict[str, Any]:
        older_than = timedelta(hours=task.runtime.settings.purge_files_older_than_hours)
        async with task.runtime.sessionmaker() as session:
            report = await purge_orphans(
                session=session, storage=task.runtime.storage, older_than=older_than
            )
        return {
            "unlinked_rows": report.unlinked_rows,
            "orphan_objects": report.orphan_objects,
            "temp_files": report.temp_files,
        }

    result = task.run_async(purge())
    logger.info("purged files: %s", result)
    return result


@job("app.maintenance.purge_jobs")
def purge_jobs(task: JobTask) -> dict[str, Any]:
    """Job rows finished before the retention cutoff. Unfinished rows stay whatever their
    age: a task still queued or running must remain visible to its owner (and cancellable)."""

    async def purge() -> int:
        cutoff = utcnow() - timedelta(days=task.runtime.settings.job_retention_days)
        async with task.runtime.sessionmaker() as session:
            result = await session.execute(
                delete(Job).where(Job.state.in_(FINISHED), Job.finished_at < cutoff)
            )
            await session.commit()
            return int(result.rowcount)  # type: ignore[attr-defined]

    jobs = task.run_async(purge())
    logger.info("purged %d finished jobs", jobs)
    return {"jobs": jobs}
