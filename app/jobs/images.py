"""Image processing on the `images` queue (JOBS-4): the source, each operation and each save
is a PROGRESS step, and a checkpoint where the owner's cancel takes effect."""

import uuid
from typing import Any

from app.images import service
from app.images.processing import apply, decode, describe, encode
from app.images.schemas import ImageOutput, ProcessJob, ProcessResult
from app.jobs.base import JobTask, job


@job(service.PROCESS_TASK)
def process_image(task: JobTask, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run the variants of one request; Pillow works here, in the pool process, not in a loop."""
    spec = ProcessJob.model_validate(arguments)
    max_pixels = task.runtime.settings.image_max_pixels
    task_id = task.request.id or str(uuid.uuid4())
    total = 2 + sum(len(variant.operations) + 1 for variant in spec.variants)

    task.progress(0, total, "fetching the source" if spec.url else "reading the source")
    data = task.run_async(service.read_source(task.runtime, spec))
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
        outputs.append(
            task.run_async(service.store_output(task.runtime, spec, variant.name, encoded, task_id))
        )
        done += 1
    return ProcessResult(outputs=outputs).model_dump(mode="json")
