"""Image operations as data: a discriminated union with bounds, checked at the API and again
in the worker (a message is only JSON, whoever sent it)."""

from typing import Annotated, Any, Literal, Self

from pydantic import AnyUrl, ConfigDict, Field, UrlConstraints, model_validator

from app.core.db import MAX_JSON_ID
from app.core.schemas import APIModel, InputModel

MAX_DIMENSION = 8192  # of any size an operation asks for
MAX_OPERATIONS = 20
MAX_BLUR_RADIUS = 50.0
VARIANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Dimension = Annotated[int, Field(ge=1, le=MAX_DIMENSION)]
OutputFormat = Literal["source", "png", "jpeg", "webp"]
HttpUrl = Annotated[
    AnyUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"], host_required=True)
]


def _present(*names: str) -> dict[str, Any]:
    """A JSON schema clause: each of `names` given, and not null (the validators below)."""
    return {
        "required": list(names),
        "properties": {name: {"not": {"type": "null"}} for name in names},
    }


class Resize(InputModel):
    """To `width` and/or `height`; with one of them, the other keeps the aspect ratio."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [_present("width"), _present("height")]})

    op: Literal["resize"]
    width: Dimension | None = None
    height: Dimension | None = None

    @model_validator(mode="after")
    def _one_side_at_least(self) -> Self:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self


class Thumbnail(InputModel):
    """Shrink to fit a `size` x `size` box, keeping the aspect ratio; never enlarges."""

    op: Literal["thumbnail"]
    size: Dimension


class Rotate(InputModel):
    """Counter-clockwise by `degrees`; the canvas grows to hold the whole image."""

    op: Literal["rotate"]
    degrees: float = Field(ge=-360, le=360, allow_inf_nan=False)


class Grayscale(InputModel):
    op: Literal["grayscale"]


class Blur(InputModel):
    op: Literal["blur"]
    radius: float = Field(default=2.0, gt=0, le=MAX_BLUR_RADIUS, allow_inf_nan=False)


class Sharpen(InputModel):
    op: Literal["sharpen"]


Operation = Annotated[
    Resize | Thumbnail | Rotate | Grayscale | Blur | Sharpen, Field(discriminator="op")
]
Operations = Annotated[list[Operation], Field(min_length=1, max_length=MAX_OPERATIONS)]


class VariantSpec(InputModel):
    """One output: the operations applied in order, saved in `format`, named `name`."""

    name: str = Field(default="processed", pattern=VARIANT_PATTERN)
    operations: Operations
    format: OutputFormat = "source"


class ProcessRequest(InputModel):
    """An uploaded image of yours (`file_id`) or a public http(s) URL (`url`), not both."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [_present("file_id"), _present("url")]})

    file_id: int | None = Field(default=None, ge=1, le=MAX_JSON_ID)
    url: HttpUrl | None = None
    operations: Operations
    format: OutputFormat = Field(default="source", description="`source` keeps the input's")
    variant: str = Field(default="processed", pattern=VARIANT_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file_id is None) == (self.url is None):
            raise ValueError("give exactly one of file_id and url")
        return self


class ProcessJob(InputModel):
    """A task's arguments: who asked, the source, the outputs."""

    owner_id: int
    file_id: int | None = None
    url: str | None = None
    item_id: int | None = None  # set for item image variants: the outputs join the item
    variants: list[VariantSpec] = Field(min_length=1, max_length=4)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Self:
        # Each output's storage key derives from the task and the name (idempotent reruns).
        if len({variant.name for variant in self.variants}) != len(self.variants):
            raise ValueError("variant names must be unique")
        return self


class ImageOutput(APIModel):
    file_id: int
    variant: str
    width: int
    height: int
    content_type: str
    download_url: str


class ProcessResult(APIModel):
    outputs: list[ImageOutput]
