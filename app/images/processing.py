"""Pillow work, synchronous and pure: bytes in, operations, bytes out.

Decoding happens inside the `with` that holds the source open, and `load()` reads every pixel
before it closes (the seed used an image after its file was closed). Pillow's pixel limit is
kept and tightened to a setting; its bomb warning is treated as the refusal it announces.
"""

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from app.images.schemas import Blur, Grayscale, Operation, Resize, Rotate, Sharpen, Thumbnail
from app.jobs.errors import JobError

# Pillow format name -> content type and file extension, for what we read and write.
FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
}
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = frozenset(content_type for content_type, _ in FORMATS.values())
_WORKING_MODES = frozenset({"L", "RGB", "RGBA"})


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def too_large(max_pixels: int) -> JobError:
    return JobError(f"The image is too large: at most {max_pixels} pixels are processed.")


def decode(data: bytes, *, max_pixels: int) -> tuple[Image.Image, str]:
    """The image, fully loaded, upright (EXIF orientation applied), in a mode every
    operation accepts; and its format."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as opened:
                opened.load()
                source_format = str(opened.format)
                image = ImageOps.exif_transpose(opened)  # a new, independent image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise too_large(max_pixels) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise JobError("The source is not a readable JPEG, PNG, WEBP or GIF image.") from exc
    return _working_mode(image), source_format


def _working_mode(image: Image.Image) -> Image.Image:
    if image.mode in _WORKING_MODES:
        return image
    if image.mode == "1" or image.mode.startswith("I"):
        return image.convert("L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def describe(operation: Operation) -> str:
    """The PROGRESS status text for a step."""
    match operation:
        case Resize(width=width, height=height):
            return f"resizing to {width or 'auto'}x{height or 'auto'}"
        case Thumbnail(size=size):
            return f"making a {size}px thumbnail"
        case Rotate(degrees=degrees):
            return f"rotating by {degrees:g} degrees"
        case Blur(radius=radius):
            return f"blurring (radius {radius:g})"
        case Grayscale():
            return "converting to grayscale"
        case Sharpen():
            return "sharpening"
    raise AssertionError(operation)  # pragma: no cover - the union is exhaustive


def apply(image: Image.Image, operation: Operation, *, max_pixels: int) -> Image.Image:
    """One operation; the result never exceeds `max_pixels`."""
    match operation:
        case Resize(width=width, height=height):
            size = _resized(image.size, width, height)
            _check_pixels(size, max_pixels)
            result = image.resize(size, Image.Resampling.LANCZOS)
        case Thumbnail(size=box):
            result = image.copy()
            result.thumbnail((box, box), Image.Resampling.LANCZOS)
        case Rotate(degrees=degrees):
            result = image.rotate(degrees, Image.Resampling.BICUBIC, expand=True)
        case Grayscale():
            result = ImageOps.grayscale(image)
        case Blur(radius=radius):
            result = image.filter(ImageFilter.GaussianBlur(radius))
        case Sharpen():
            result = image.filter(ImageFilter.SHARPEN)
        case _:  # pragma: no cover - the union is exhaustive
            raise AssertionError(operation)
    _check_pixels(result.size, max_pixels)
    return result


def _resized(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    old_width, old_height = size
    if width is None:
        assert height is not None
        width = max(1, round(old_width * height / old_height))
    elif height is None:
        height = max(1, round(old_height * width / old_width))
    return width, height


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise too_large(max_pixels)


def encode(image: Image.Image, output_format: str, source_format: str) -> Encoded:
    """Save in the asked format (`source`: the input's). Metadata (EXIF, GPS) is not copied."""
    pillow_format = OUTPUT_FORMATS.get(output_format, source_format)
    content_type, extension = FORMATS[pillow_format]
    options: dict[str, object] = {}
    if pillow_format == "JPEG":
        image = image.convert("RGB") if image.mode == "RGBA" else image  # no alpha in JPEG
        options = {"quality": 85}
    elif pillow_format == "WEBP":
        options = {"quality": 80}
    elif pillow_format == "GIF":
        image = image if image.mode == "L" else image.quantize(method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return Encoded(buffer.getvalue(), content_type, extension, image.width, image.height)
