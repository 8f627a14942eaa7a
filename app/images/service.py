"""Image jobs: started by the API (checks, then enqueue), carried out by the worker (source in,
outputs stored as files linked to it)."""

import hashlib
import logging
import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.core.safe_fetch import (
    FetchFailed,
    FetchRefused,
    check_url,
    literal_ip,
    parse_networks,
    refusal,
    safe_fetch,
)
from app.core.storage import Storage
from app.files.errors import FileNotFound, QuotaExceeded, UnsupportedFileType
from app.files.models import StoredFile
from app.files.quota import Quota, reserve
from app.files.service import download_url
from app.images.errors import URLNotAllowed
from app.images.processing import CONTENT_TYPES, Encoded
from app.images.schemas import ImageOutput, ProcessJob, ProcessRequest, Thumbnail, VariantSpec
from app.jobs.errors import JobError
from app.jobs.models import Job
from app.jobs.service import Jobs, NameCap

logger = logging.getLogger("app.images")
PROCESS_TASK = "app.images.process"
PROCESS_URL_TASK = "app.images.process_url"  # routed to the images_url queue
# What every item image becomes once uploaded (ITEMS-4); WEBP: small, and every browser has it.
ITEM_VARIANTS = (
    VariantSpec(name="thumbnail", operations=[Thumbnail(op="thumbnail", size=256)], format="webp"),
    VariantSpec(name="medium", operations=[Thumbnail(op="thumbnail", size=1024)], format="webp"),
)
_KEY_NAMESPACE = uuid.UUID("5d3f4c2e-0005-4a1b-9c6e-1a2b3c4d5e6f")


# -- the API side ------------------------------------------------------------------------------


async def start(
    *, session: AsyncSession, jobs: Jobs, settings: Settings, owner_id: int, request: ProcessRequest
) -> Job:
    """Check what can be checked now (the source is yours and an image; the URL's shape and a
    literal address), then enqueue. Host names are resolved and vetted by the worker."""
    if request.file_id is not None:
        await _owned_image(session, request.file_id, owner_id)
    url = str(request.url) if request.url is not None else None
    if url is not None:
        _precheck_url(url, settings)
    arguments = ProcessJob(
        owner_id=owner_id,
        file_id=request.file_id,
        url=url,
        variants=[
            VariantSpec(name=request.variant, operations=request.operations, format=request.format)
        ],
    )
    if url is None:
        return await jobs.enqueue(
            session, PROCESS_TASK, arguments.model_dump(mode="json"), owner_id=owner_id
        )
    cap = NameCap(
        limit=settings.user_max_active_url_image_jobs,
        setting="USER_MAX_ACTIVE_URL_IMAGE_JOBS",
        what="image jobs from a URL",
    )
    return await jobs.enqueue(
        session, PROCESS_URL_TASK, arguments.model_dump(mode="json"), owner_id=owner_id,
        name_cap=cap,
    )  # fmt: skip


async def _owned_image(session: AsyncSession, file_id: int, owner_id: int) -> StoredFile:
    """Only the owner may process a file (an admin too would make copies of private files)."""
    row = await session.get(StoredFile, file_id)
    if row is None or row.deleted_at is not None or row.owner_id != owner_id:
        raise FileNotFound(file_id)
    if row.content_type not in CONTENT_TYPES:
        raise UnsupportedFileType(f"File {file_id} is not a JPEG, PNG, WEBP or GIF image")
    return row


def _precheck_url(url: str, settings: Settings) -> None:
    try:
        parsed = check_url(url)
    except FetchRefused as exc:
        raise URLNotAllowed(str(exc)) from exc
    ip = literal_ip(parsed.host)
    if ip is not None:
        reason = refusal(ip, parse_networks(settings.ssrf_allowed_networks))
        if reason is not None:
            raise URLNotAllowed(f"The URL points to a {reason} address, which is not allowed.")


async def enqueue_item_variants(*, session: AsyncSession, jobs: Jobs, row: StoredFile) -> None:
    """Variants for a new item image, after its commit. A queue outage doesn't fail the upload:
    the image is there, its variants are simply absent (and `variants_task_id` stays empty)."""
    arguments = ProcessJob(
        owner_id=row.owner_id, file_id=row.id, item_id=row.item_id, variants=list(ITEM_VARIANTS)
    )
    try:
        # Uncapped: the upload was accepted, its variants follow (they count while queued).
        job = await jobs.enqueue(
            session, PROCESS_TASK, arguments.model_dump(mode="json"), owner_id=row.owner_id,
            capped=False,
        )  # fmt: skip
    except ServiceUnavailable:
        logger.warning("variants of file %s not queued: the queue is down", row.id)
        return
    row.variants_task_id = job.id
    await session.commit()


# -- the worker side ---------------------------------------------------------------------------


async def fetch_source(*, http: httpx.AsyncClient, settings: Settings, url: str) -> bytes:
    """The source from a URL, vetted against SSRF on every hop; refusals are safe to show."""
    try:
        return await safe_fetch(
            http,
            url,
            max_bytes=settings.image_max_source_bytes,
            time_limit=settings.image_fetch_timeout_seconds,
            step_timeout=httpx.Timeout(
                settings.image_fetch_read_timeout_seconds,
                connect=settings.image_fetch_connect_timeout_seconds,
            ),
            allowed_content_types=CONTENT_TYPES,
            allowed_networks=parse_networks(settings.ssrf_allowed_networks),
        )
    except (FetchRefused, FetchFailed) as exc:
        raise JobError(str(exc)) from exc


async def source_object(*, session: AsyncSession, job: ProcessJob, max_bytes: int) -> StoredFile:
    """The stored source file, if it is still there, still the owner's, and of a usable size."""
    assert job.file_id is not None
    row = await session.get(StoredFile, job.file_id)
    if row is None or row.deleted_at is not None or row.owner_id != job.owner_id:
        raise JobError("The source file no longer exists.")
    if row.size > max_bytes:
        raise JobError(f"The source file is larger than {max_bytes} bytes.")
    if row.size == 0:
        raise JobError("The source file is empty.")
    return row


async def read_object(*, storage: Storage, key: str, size: int) -> bytes:
    return b"".join([chunk async for chunk in storage.stream(key, 0, size - 1)])


def output_key(*, task_id: str, variant: str) -> str:
    """The same key on every run of a task: a re-delivered task finds what it already stored."""
    name = uuid.uuid5(_KEY_NAMESPACE, f"{task_id}/{variant}").hex
    return f"{name[:2]}/{name}"


async def store_output(
    *,
    session: AsyncSession,
    storage: Storage,
    job: ProcessJob,
    variant: str,
    encoded: Encoded,
    task_id: str,
    settings: Settings,
    quota: Quota | None = None,
) -> ImageOutput:
    """Object first, then its row (as uploads do); idempotent by key. With a quota, an output
    that does not fit the owner's fails the job with the numbers."""
    key = output_key(task_id=task_id, variant=variant)
    row = (await session.execute(select(StoredFile).where(StoredFile.key == key))).scalar()
    if row is None:
        temp = storage.temp_path()
        try:
            temp.write_bytes(encoded.data)  # this loop serves one task: blocking is fine
            await storage.put(key, temp, content_type=encoded.content_type)
        finally:
            temp.unlink(missing_ok=True)  # the S3 backend leaves it where it was
        if quota is not None:
            try:
                await reserve(
                    session=session, owner_id=job.owner_id, size=len(encoded.data), quota=quota
                )
            except QuotaExceeded as exc:
                await storage.delete(key)
                raise JobError(exc.message) from exc
        row = _output_row(job, variant, encoded, key)
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:  # a concurrent run of the same task got there first
            await session.rollback()
            row = (
                await session.execute(select(StoredFile).where(StoredFile.key == key))
            ).scalar_one()
    return ImageOutput(
        file_id=row.id, variant=variant, width=encoded.width, height=encoded.height,
        content_type=row.content_type, download_url=download_url(row.id, settings=settings),
    )  # fmt: skip


def _output_row(job: ProcessJob, variant: str, encoded: Encoded, key: str) -> StoredFile:
    return StoredFile(
        key=key,
        filename=f"{variant}.{encoded.extension}",
        content_type=encoded.content_type,
        size=len(encoded.data),
        sha256=hashlib.sha256(encoded.data).hexdigest(),
        owner_id=job.owner_id,
        item_id=job.item_id,
        source_file_id=job.file_id,
        variant=variant,
        width=encoded.width,
        height=encoded.height,
    )
