from fastapi import APIRouter, status

from app.auth.dependencies import CurrentPrincipal
from app.core.dependencies import SessionDep, SettingsDep
from app.images import service
from app.images.schemas import ProcessRequest
from app.jobs.dependencies import JobsDep
from app.jobs.schemas import TaskAccepted, accepted

router = APIRouter(prefix="/images", tags=["images"])


@router.post(
    "/process",
    response_model=TaskAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        404: {"description": "No such file of yours"},
        415: {"description": "The file is not an image"},
        422: {"description": "Invalid operations, or a URL that may not be fetched"},
        429: {
            "description": "Too many of your jobs queued or running (USER_MAX_ACTIVE_JOBS, "
            "USER_MAX_ACTIVE_URL_IMAGE_JOBS); see Retry-After"
        },
        503: {"description": "The job queue is unavailable"},
    },
)
async def process_image(
    body: ProcessRequest,
    user: CurrentPrincipal,
    session: SessionDep,
    jobs: JobsDep,
    settings: SettingsDep,
) -> TaskAccepted:
    """Process one of your images, or a public image URL; follow the task for its outputs."""
    job = await service.start(
        session=session, jobs=jobs, settings=settings, owner_id=user.id, request=body
    )
    return accepted(job, settings=settings)
