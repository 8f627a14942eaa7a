from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel

from app.core.config import Settings
from app.core.schemas import APIModel
from app.jobs.models import Job, JobState

TaskId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=36,
        pattern=r"^[0-9a-fA-F-]{1,36}$",
        description="The task ID returned when the task was started",
    ),
]


class Progress(BaseModel):
    current: int
    total: int
    status: str


class TaskRead(APIModel):
    id: str
    name: str
    state: JobState
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskAccepted(APIModel):
    """What a route that starts a task answers (202): poll `status_url` for its state."""

    task_id: str
    state: JobState
    status_url: str


def status_url(task_id: str, *, settings: Settings) -> str:
    """Where a task's owner follows it (app.task_api), under API_V1_PREFIX."""
    return settings.api_path(f"/tasks/{task_id}")


def accepted(job: Job, *, settings: Settings) -> TaskAccepted:
    """The 202 answer of a route that started a job: where to follow it."""
    return TaskAccepted(
        task_id=job.id, state=job.state, status_url=status_url(job.id, settings=settings)
    )
