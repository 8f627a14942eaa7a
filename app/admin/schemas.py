from datetime import datetime
from typing import Annotated

from fastapi import Path

from app.core.background import TaskStatus
from app.core.schemas import APIModel

BackgroundTaskId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{32}$", description="A background task of this API process")
]


class BackgroundTaskRead(APIModel):
    id: str
    name: str
    status: TaskStatus
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
