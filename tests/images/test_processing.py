"""The Pillow pipeline on real images, and the operation schemas' bounds (no worker here)."""

import io
from typing import Any

import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from app.images.processing import apply, decode, describe, encode
from app.images.schemas import (
    MAX_OPERATIONS,
    Blur,
    Grayscale,
    Operation,
    ProcessJob,
    ProcessRequest,
    Resize,
    Rotate,
    Sharpen,
    Thumbnail,
)
from app.jobs.errors import JobError
from tests.images.helpers import image_bytes, open_image

MAX_PIXELS = 1_000_000
OPERATION: TypeAdapter[Operation] = TypeAdapter(Operation)


def run(data: bytes, *operations: dict[str, Any], fmt: str = "source") -> Image.Image:
    image, source_format = decode(data, max_pixels=MAX_PIXELS)
    for operation in operations:
        image = apply(image, OPERATION.validate_python(operation), max_pixels=MAX_PIXELS)
    return open_image(encode(image, fmt, source_format).data)


def test_resize_keeps_the_aspect_ratio_when_one_side_is_given() -> None:
    source = image_bytes(200, 100)
    assert run(source, {"op": "resize", "width": 50}).size == (50, 25)
    assert run(source, {"op": "resize", "height": 20}).size == (40, 20)
    assert run(source, {"op": "resize", "width": 30, "height": 90}).size == (30, 90)


def test_thumbnail_fits_the_box_and_never_enlarges() -> None:
    assert run(image_bytes(400, 100), {"op": "thumbnail", "size": 100}).size == (100, 25)
    assert run(image_bytes(40, 30), {"op": "thumbnail", "size": 100}).size == (40, 30)


def test_rotate_expands_the_canvas() -> None:
    assert run(image_bytes(60, 20), {"op": "rotate", "degrees": 90}).size == (20, 60)
    # 60 cos 45 + 20 sin 45 = 56.6 each way: the corners stay in the picture
    assert run(image_bytes(60, 20), {"op": "rotate", "degrees": 45}).size == (58, 58)


def test_grayscale_blur_and_sharpen() -> None:
    gray = run(image_bytes(32, 32, mode="RGB"), {"op": "grayscale"})
    assert gray.mode == "L"
    source = image_bytes(64, 64)
    plain = open_image(source).convert("L")
    blurred = run(source, {"op": "blur", "radius": 8}, {"op": "grayscale"})
    sharpened = run(source, {"op": "sharpen"}, {"op": "grayscale"})
    assert blurred.size == sharpened.size == (64, 64)
    assert blurred.tobytes() != plain.tobytes()
    assert sharpened.tobytes() != plain.tobytes()


@pytest.mark.parametrize(
    ("fmt", "content_type", "pillow_format"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP"),
     ("source", "image/gif", "GIF")],
)  # fmt: skip
def test_outputs_in_each_format(fmt: str, content_type: str, pillow_format: str) -> None:
    image, source_format = decode(image_bytes(30, 20, fmt="GIF"), max_pixels=MAX_PIXELS)
    encoded = encode(image, fmt, source_format)
    assert encoded.content_type == content_type
    with Image.open(io.BytesIO(encoded.data)) as written:
        assert written.format == pillow_format
        assert written.size == (30, 20) == (encoded.width, encoded.height)


def test_transparent_images_become_jpeg_without_alpha() -> None:
    image, source_format = decode(image_bytes(10, 10, mode="RGBA"), max_pixels=MAX_PIXELS)
    assert image.mode == "RGBA"
    assert open_image(encode(image, "jpeg", source_format).data).mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": a phone held upright
    upright, _ = decode(image_bytes(60, 20, fmt="JPEG", exif=exif), max_pixels=MAX_PIXELS)
    assert upright.size == (20, 60)


def test_decompression_bombs_are_refused() -> None:
    # Tiny files, huge canvases: Pillow's warning zone (over the limit) and error zone (2x).
    for side in (1200, 1500):
        buffer = io.BytesIO()
        Image.new("1", (side, side)).save(buffer, format="PNG")
        bomb = buffer.getvalue()
        assert len(bomb) < 10_000
        with pytest.raises(JobError, match="at most 1000000 pixels"):
            decode(bomb, max_pixels=MAX_PIXELS)
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS  # set explicitly, never switched off


def test_operations_can_not_grow_past_the_pixel_limit() -> None:
    with pytest.raises(JobError, match="at most 1000000 pixels"):
        run(image_bytes(10, 10), {"op": "resize", "width": 2000, "height": 2000})
    with pytest.raises(JobError, match="at most 1000000 pixels"):
        run(image_bytes(999, 999), {"op": "rotate", "degrees": 45})


@pytest.mark.parametrize(
    "data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, b"%PDF-1.4 ..."]
)
def test_what_is_not_an_image_is_refused(data: bytes) -> None:
    with pytest.raises(JobError, match="not a readable JPEG, PNG, WEBP or GIF"):
        decode(data, max_pixels=MAX_PIXELS)


def test_other_image_formats_are_refused() -> None:
    with pytest.raises(JobError, match="not a readable"):
        decode(image_bytes(10, 10, fmt="BMP"), max_pixels=MAX_PIXELS)


def test_each_step_has_a_status_text() -> None:
    texts = [
        describe(Resize(op="resize", width=10)),
        describe(Thumbnail(op="thumbnail", size=5)),
        describe(Rotate(op="rotate", degrees=90)),
        describe(Grayscale(op="grayscale")),
        describe(Blur(op="blur", radius=1.5)),
        describe(Sharpen(op="sharpen")),
    ]
    assert texts == [
        "resizing to 10xauto", "making a 5px thumbnail", "rotating by 90 degrees",
        "converting to grayscale", "blurring (radius 1.5)", "sharpening",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        {"operations": [{"op": "grayscale"}]},  # no source
        {"file_id": 1, "url": "https://example.com/a.png", "operations": [{"op": "grayscale"}]},
        {"file_id": 1, "operations": []},
        {"file_id": 1, "operations": [{"op": "grayscale"}] * (MAX_OPERATIONS + 1)},
        {"file_id": 1, "operations": [{"op": "explode"}]},
        {"file_id": 1, "operations": [{"op": "resize"}]},
        {"file_id": 1, "operations": [{"op": "resize", "width": 100_000}]},
        {"file_id": 1, "operations": [{"op": "blur", "radius": 1000}]},
        {"file_id": 1, "operations": [{"op": "rotate", "degrees": "nan"}]},
        {"file_id": 1, "operations": [{"op": "grayscale", "extra": 1}]},
        {"file_id": 1, "operations": [{"op": "grayscale"}], "format": "bmp"},
        {"file_id": 1, "operations": [{"op": "grayscale"}], "variant": "../x"},
        {"url": "file:///etc/passwd", "operations": [{"op": "grayscale"}]},
        {"url": "ftp://example.com/a.png", "operations": [{"op": "grayscale"}]},
    ],
)
def test_bad_requests_are_refused_by_the_schema(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProcessRequest.model_validate(body)


def test_variant_names_in_one_job_are_unique() -> None:
    variant = {"name": "a", "operations": [{"op": "grayscale"}]}
    with pytest.raises(ValidationError, match="unique"):
        ProcessJob.model_validate({"owner_id": 1, "file_id": 1, "variants": [variant, variant]})
