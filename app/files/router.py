import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.dependencies import CurrentPrincipal
from app.core.config import Settings
from app.core.dependencies import ServicesDep, SessionDep, SettingsDep, StorageDep
from app.core.errors import ErrorResponse
from app.core.storage import Storage
from app.core.streams import LimitedStreamingResponse
from app.files import service
from app.files.dependencies import ReadableFile, StreamableFile
from app.files.models import StoredFile
from app.files.quota import quota_for, usage
from app.files.safety import content_disposition
from app.files.schemas import FileRead, PresignedURL, StorageUsage

router = APIRouter(prefix="/files", tags=["files"])


# Upload routes get their own body cap (MAX_UPLOAD_BYTES plus room for the multipart framing)
# in BodyLimitsMiddleware instead of the global one; the handler counts the file's bytes.
# The second is the item image upload (app.items.images), which reuses the two specs below.
def upload_paths(api_prefix: str) -> tuple[str, str]:
    """The upload routes' path patterns under API_V1_PREFIX (the only version with uploads)."""
    prefix = re.escape(api_prefix)
    return (rf"^{prefix}/files/?$", rf"^{prefix}/items/[^/]+/images/?$")


MULTIPART_OVERHEAD_BYTES = 64 * 1024

MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {
        "model": ErrorResponse,
        "description": "The file is over MAX_UPLOAD_BYTES, or over the owner's storage quota "
        "(USER_STORAGE_QUOTA_BYTES) or file count (USER_MAX_FILES): see the error's code",
    },
    415: {
        "model": ErrorResponse,
        "description": "Not multipart/form-data, extension not allowed, or content not matching it",
    },
    503: {"model": ErrorResponse, "description": "Storage unavailable"},
    507: {"model": ErrorResponse, "description": "Storage full"},
}
# The bytes go out with the media type stored for the file (sniffed on upload, or the format
# of a made image or report), so any type may come back.
_BYTES: dict[str, Any] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
# What service.parse_range reads: one `bytes=` range (a list is answered whole).
RANGE_SCHEMA_PATTERN = r"^\s*bytes=(?:[^,]*,[\s\S]*|\d+-\d*|-\d*[1-9]\d*)\s*$"
_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {"content": _BYTES, "description": "The whole file, with its stored media type"},
    206: {"content": _BYTES, "description": "The requested range (one `bytes=` range)"},
    304: {"description": "Not modified (If-None-Match)"},
    416: {"model": ErrorResponse, "description": "Range not satisfiable"},
    429: {
        "model": ErrorResponse,
        "description": "Over MAX_CONCURRENT_STREAMS_PER_USER downloads at once",
    },
    503: {"model": ErrorResponse, "description": "Storage unavailable"},
}


@router.post(
    "",
    response_model=FileRead,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=MULTIPART_BODY,
    responses=UPLOAD_ERRORS,
)
async def upload_file(
    request: Request,
    owner: CurrentPrincipal,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> FileRead:
    """Upload one file (multipart field `file`), streamed to storage as it arrives."""
    row = await _store(request, session, storage, settings, owner_id=owner.id)
    return service.file_read(row, settings=settings)


@router.get("/usage", response_model=StorageUsage)
async def storage_usage(
    owner: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> StorageUsage:
    """Your storage use and quotas: every live file you own counts (uploads, image outputs,
    item image variants, report files)."""
    quota = quota_for(settings)
    used = await usage(session=session, owner_id=owner.id)
    return StorageUsage(
        used_bytes=used.bytes, quota_bytes=quota.max_bytes,
        remaining_bytes=max(0, quota.max_bytes - used.bytes),
        used_files=used.files, quota_files=quota.max_files,
        remaining_files=max(0, quota.max_files - used.files),
    )  # fmt: skip


@router.get("/{file_id}", response_model=FileRead)
async def read_file(row: ReadableFile, session: SessionDep, settings: SettingsDep) -> FileRead:
    """A file's metadata (owner or admin), with the images made from it."""
    variants = await service.variants_of(session=session, file_ids=[row.id])
    return service.file_read(row, settings=settings, variants=variants[row.id])


@router.get("/{file_id}/content", response_class=StreamingResponse, responses=_CONTENT)
async def download_file(
    row: StreamableFile,
    viewer: CurrentPrincipal,
    services: ServicesDep,
    range_header: Annotated[
        str | None,
        # Stated, not enforced here: a range the service can't read is a 416, as RFC 9110 says.
        Header(alias="range", json_schema_extra={"pattern": RANGE_SCHEMA_PATTERN}),
    ] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The file's bytes (owner or admin), with ranges, ETag and a safe download name."""
    etag = service.etag_of(row)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(row.filename),
        "Cache-Control": "private, no-cache",
    }
    if service.etag_matches(if_none_match=if_none_match, etag=etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    byte_range = service.parse_range(header=range_header, size=row.size)
    chunks = await service.open_content(storage=services.storage, row=row, byte_range=byte_range)
    headers["Content-Length"] = str(byte_range.end - byte_range.start + 1 if row.size else 0)
    if byte_range.partial:
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{row.size}"
    return LimitedStreamingResponse(
        chunks,
        limiter=services.streams,
        user_id=viewer.id,
        write_timeout=services.settings.stream_write_timeout_seconds,
        status_code=206 if byte_range.partial else 200,
        media_type=row.content_type,
        headers=headers,
    )


@router.get("/{file_id}/url", response_model=PresignedURL)
async def presign_file(
    row: ReadableFile, storage: StorageDep, settings: SettingsDep
) -> PresignedURL:
    """A short-lived URL straight to the object (S3 storage only; 409 on local storage)."""
    expires = settings.presigned_url_expire_seconds
    url = await storage.presign(
        row.key, expires=expires, filename_header=content_disposition(row.filename),
        content_type=row.content_type,
    )  # fmt: skip
    return PresignedURL(url=url, expires_in=expires)


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(row: ReadableFile, session: SessionDep, storage: StorageDep) -> None:
    """Delete a file: its row, then its object (owner or admin)."""
    await service.delete_file(session=session, storage=storage, row=row)


async def _store(
    request: Request,
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    **target: Any,
) -> StoredFile:
    return await service.upload(
        session=session,
        storage=storage,
        body=request.stream(),
        content_type=request.headers.get("content-type"),
        max_bytes=settings.max_upload_bytes,
        quota=quota_for(settings),
        allowed=frozenset(settings.upload_allowed_extensions),
        **target,
    )
