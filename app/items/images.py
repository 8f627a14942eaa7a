"""An item's images: attach one, list them. The item owns them; app.files stores the bytes
and app.images makes the variants (thumbnail, medium) in the background."""

from fastapi import APIRouter, Request, status

from app.core.dependencies import SessionDep, SettingsDep, StorageDep
from app.files import service as files
from app.files.quota import quota_for
from app.files.router import MULTIPART_BODY, UPLOAD_ERRORS
from app.files.safety import IMAGE_EXTENSIONS
from app.files.schemas import FileRead
from app.images import service as images
from app.items.dependencies import OwnedItem
from app.jobs.dependencies import JobsDep

router = APIRouter(prefix="/items", tags=["items"])


@router.post(
    "/{item_id}/images",
    response_model=FileRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=MULTIPART_BODY,
    responses=UPLOAD_ERRORS,
)
async def upload_item_image(
    request: Request,
    item: OwnedItem,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    jobs: JobsDep,
) -> FileRead:
    """Attach an image (png, jpeg, gif, webp) to an item (owner or admin); its variants
    (thumbnail, medium) are made in the background: follow `variants_task_id`."""
    row = await files.upload(
        session=session,
        storage=storage,
        body=request.stream(),
        content_type=request.headers.get("content-type"),
        max_bytes=settings.max_upload_bytes,
        owner_id=item.owner_id,
        quota=quota_for(settings),
        item_id=item.id,
        allowed=IMAGE_EXTENSIONS & set(settings.upload_allowed_extensions),
    )
    await images.enqueue_item_variants(session=session, jobs=jobs, row=row)
    return files.file_read(row, settings=settings)


@router.get("/{item_id}/images", response_model=list[FileRead])
async def list_item_images(
    item: OwnedItem, session: SessionDep, settings: SettingsDep
) -> list[FileRead]:
    """An item's images (owner or admin), each with its variants once they are ready."""
    rows = await files.list_for_item(session=session, item_id=item.id)
    variants = await files.variants_of(session=session, file_ids=[row.id for row in rows])
    return [files.file_read(row, settings=settings, variants=variants[row.id]) for row in rows]
