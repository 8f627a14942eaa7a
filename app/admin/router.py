"""Operations for admins: this API process's in-process background tasks (JOBS-8).

Each API process has its own tasks: with several processes, the answer is the one process
that served the request (Celery jobs, which every process sees, are under /tasks).
"""

from fastapi import APIRouter, status

from app.admin.errors import BackgroundTaskNotFound
from app.admin.schemas import BackgroundTaskId, BackgroundTaskRead
from app.auth.dependencies import AdminPrincipal
from app.core.dependencies import BackgroundDep

router = APIRouter(prefix="/admin/background-tasks", tags=["admin"])


@router.get("", response_model=list[BackgroundTaskRead])
async def list_background_tasks(
    _admin: AdminPrincipal, manager: BackgroundDep
) -> list[BackgroundTaskRead]:
    """Running and recently finished in-process tasks of this API process, newest first."""
    return [BackgroundTaskRead.model_validate(info) for info in manager.list()]


@router.delete(
    "/{task_id}", response_model=BackgroundTaskRead, status_code=status.HTTP_202_ACCEPTED
)
async def cancel_background_task(
    task_id: BackgroundTaskId, _admin: AdminPrincipal, manager: BackgroundDep
) -> BackgroundTaskRead:
    """Cancel a running task (a finished one is answered as it is)."""
    info = await manager.cancel(task_id)
    if info is None:
        raise BackgroundTaskNotFound(task_id)
    return BackgroundTaskRead.model_validate(info)
