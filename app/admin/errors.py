from app.core.errors import NotFound


class BackgroundTaskNotFound(NotFound):
    """Not in this API process: each process has its own in-process tasks."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Background task {task_id} not found")
