from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigIntPK, str_enum, utcnow


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"  # cancelled


FINISHED = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})
# Queued or running: what USER_MAX_ACTIVE_JOBS counts (RETRY waits for its next run).
ACTIVE = frozenset({JobState.PENDING, JobState.STARTED, JobState.PROGRESS, JobState.RETRY})


class Job(Base):
    """A Celery task as its owner sees it. The row is written in the same transaction as the
    work it belongs to, before the message is sent; the worker keeps it current. Reading state
    from here (not the result backend) gives owner checks and listing on either broker."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_id_created_at", "owner_id", "created_at"),
        # The reconciler's query (open rows, oldest first) without a scan of finished ones.
        Index("ix_jobs_state_created_at", "state", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the Celery task id
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("users.id", ondelete="CASCADE")
    )
    state: Mapped[JobState] = mapped_column(str_enum(JobState), default=JobState.PENDING)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)  # safe to show the owner: no internals
    attempts: Mapped[int] = mapped_column(default=0)
    # What the reconciler (app/jobs/reconcile.py) needs to send the task again when its
    # message is lost: recorded at enqueue, or by the worker for tasks sent without a row.
    args: Mapped[list[Any] | None] = mapped_column(JSON)
    kwargs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    queue: Mapped[str | None] = mapped_column(String(50))
    worker: Mapped[str | None] = mapped_column(String(255))  # the node that last started it
    requeues: Mapped[int] = mapped_column(default=0, server_default="0")  # by the reconciler
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Heartbeat(Base):
    """The last sign of life of a periodic sender (beat → worker), readable by every API
    process: readiness tells a stopped worker or scheduler from a healthy one."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    beat_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(255))  # host and pid of the worker
