"""The task API (JOBS-7): a task's state for its owner (or an admin), listing, cancel.

Apart from app.jobs because it needs auth's principal, and auth enqueues through jobs: the
machinery stays below every domain, its API for principals sits above them."""

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth.dependencies import CurrentPrincipal
from app.core.dependencies import SessionDep
from app.core.schemas import Page, PageNumber, PerPage
from app.jobs import service
from app.jobs.schemas import TaskId, TaskRead

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.get("/", response_model=Page[TaskRead])
async def list_tasks(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: PageNumber = 1,
    per_page: PerPage = 20,
    name: Annotated[str | None, Query(max_length=100, pattern=r"^[a-z0-9_.]+$")] = None,
) -> Page[TaskRead]:
    """Your tasks, newest first."""
    rows, total = await service.list_owned(
        session=session,
        owner_id=principal.id,
        offset=(page - 1) * per_page,
        limit=per_page,
        name=name,
    )
    return Page[TaskRead].build(
        [TaskRead.model_validate(row) for row in rows], total=total, page=page, per_page=per_page
    )


@router.get("/{task_id}", response_model=TaskRead)
async def read_task(task_id: TaskId, session: SessionDep, principal: CurrentPrincipal) -> TaskRead:
    """State, progress, result or a safe error message. Someone else's task is 404."""
    job = await service.get_visible(
        session=session, job_id=task_id, user_id=principal.id, is_admin=principal.is_admin
    )
    return TaskRead.model_validate(job)


@router.delete("/{task_id}", response_model=TaskRead, status_code=202)
async def cancel_task(
    task_id: TaskId, session: SessionDep, principal: CurrentPrincipal
) -> TaskRead:
    """Cancel: a queued task never runs; a running one stops at its next checkpoint."""
    job = await service.get_visible(
        session=session, job_id=task_id, user_id=principal.id, is_admin=principal.is_admin
    )
    return TaskRead.model_validate(await service.request_cancel(session=session, job=job))
