"""Image processing on the `images` queue (JOBS-4): the source, each operation and each save
is a PROGRESS step, and a checkpoint where the owner's cancel takes effect."""

import uuid
from typing import Any

from app.files.quota import quota_for
from app.images import service
from app.images.processing import Encoded, apply, decode, describe, encode
from app.images.schemas import ImageOutput, ProcessJob, ProcessResult
from app.jobs.base import JobTask, job
from app.jobs.runtime import WorkerRuntime


def _process(task: JobTask, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run the variants of one request; Pillow works here, in the pool process, not in a loop."""
    spec = ProcessJob.model_validate(arguments)
    max_pixels = task.runtime.settings.image_max_pixels
    task_id = task.request.id or str(uuid.uuid4())
    total = 2 + sum(len(variant.operations) + 1 for variant in spec.variants)

    task.progress(0, total, "fetching the source" if spec.url else "reading the source")
    data = _read_source(task, spec)
    task.progress(1, total, "decoding")
    source, source_format = decode(data, max_pixels=max_pixels)
    del data
    done = 2
    outputs: list[ImageOutput] = []
    for variant in spec.variants:
        image = source
        for operation in variant.operations:
            task.progress(done, total, f"{variant.name}: {describe(operation)}")
            image = apply(image, operation, max_pixels=max_pixels)
            done += 1
        task.progress(done, total, f"{variant.name}: saving")
        encoded = encode(image, variant.format, source_format)
        outputs.append(_store(task, spec, variant.name, encoded, task_id))
        done += 1
    return ProcessResult(outputs=outputs).model_dump(mode="json")


# One body, two names: a URL source goes to its own queue (images_url), so a hung upstream
# never holds a slot that stored-file jobs need (USER_MAX_ACTIVE_URL_IMAGE_JOBS caps a user's).
process_image = job(service.PROCESS_TASK, title="Image processing")(_process)
process_url_image = job(service.PROCESS_URL_TASK, title="Image processing")(_process)


def _read_source(task: JobTask, spec: ProcessJob) -> bytes:
    runtime = task.runtime
    if spec.url is not None:
        return task.run_async(_fetch(runtime, spec.url))
    max_bytes = runtime.settings.image_max_source_bytes
    row = task.in_session(
        lambda session: service.source_object(session=session, job=spec, max_bytes=max_bytes)
    )
    return task.run_async(service.read_object(storage=runtime.storage, key=row.key, size=row.size))


def _store(
    task: JobTask, spec: ProcessJob, variant: str, encoded: Encoded, task_id: str
) -> ImageOutput:
    storage = task.runtime.storage
    # An item's own variants are the service's doing, bounded per upload: counted, not refused.
    quota = quota_for(task.runtime.settings) if spec.item_id is None else None
    return task.in_session(
        lambda session: service.store_output(
            session=session,
            storage=storage,
            job=spec,
            variant=variant,
            encoded=encoded,
            task_id=task_id,
            settings=task.runtime.settings,
            quota=quota,
        )
    )


async def _fetch(runtime: WorkerRuntime, url: str) -> bytes:
    # Inside the loop: the runtime makes its HTTP client on first use, in the loop that uses it.
    return await service.fetch_source(http=runtime.http, settings=runtime.settings, url=url)
