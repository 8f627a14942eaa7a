"""The project's base model, shared constrained types and the two page envelopes."""

import math
import re
from typing import Annotated, Generic, TypeVar

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from app.core.db import MAX_ID

# Text a database can store: PostgreSQL refuses NUL characters, so refuse them at the edge.
NO_NUL_PATTERN = r"^[^\x00]*$"
CleanStr = Annotated[str, StringConstraints(pattern=NO_NUL_PATTERN)]


def any_case(word: str) -> str:
    """A regular expression matching `word` in any letter case (JSON Schema has no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# email-validator refuses special-use domains (RFC 6761: `.test`, `.local`, ...); "format":
# "email" alone does not say so.
_RESERVED_DOMAINS = "|".join(any_case(name) for name in sorted(SPECIAL_USE_DOMAIN_NAMES))
EMAIL_SCHEMA_PATTERN = rf"^(?![\s\S]*@(?:[\s\S]*\.)?(?:{_RESERVED_DOMAINS})\.?$)"
# An address as accounts and the outbox store it: at most 254 characters (RFC 5321's path
# limit), lower-cased so one mailbox is one account.
Email = Annotated[
    EmailStr,
    StringConstraints(max_length=254),
    AfterValidator(str.lower),
    Field(json_schema_extra={"pattern": EMAIL_SCHEMA_PATTERN}),
]

PrimaryKey = Annotated[int, Path(ge=1, le=MAX_ID, description="Resource id")]
OptionalId = Annotated[int | None, Query(ge=1, le=MAX_ID)]
PageNumber = Annotated[int, Query(ge=1, le=100_000, description="1-based page number")]
PerPage = Annotated[int, Query(ge=1, le=100, description="Items per page")]
SearchTerm = Annotated[
    str | None,
    Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN, description="Case-insensitive"),
]


class APIModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class InputModel(BaseModel):
    """Request bodies: unknown fields are refused, so a typo or `role` never slips through."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


T = TypeVar("T")


class Page(APIModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int
    has_next: bool
    total_pages: int

    @classmethod
    def build(cls, items: list[T], *, total: int, page: int, per_page: int) -> "Page[T]":
        total_pages = math.ceil(total / per_page) if total else 0
        return cls(
            items=items,
            total=total,
            page=page,
            per_page=per_page,
            has_next=page < total_pages,
            total_pages=total_pages,
        )


class CursorPage(APIModel, Generic[T]):
    """A keyset page (app.core.pagination). A route names its page with a subclass, e.g.
    `class ItemCursorPage(CursorPage[ItemRead])`, so the OpenAPI schema keeps a readable name
    (used directly, FastAPI would call it `CursorPage_ItemRead_`); the subclass may restate a
    field only to describe it for its own listing."""

    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")
