from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from app.campaigns.models import CampaignStatus
from app.core.db import MAX_JSON_ID
from app.core.schemas import APIModel, Email, InputModel
from app.jobs.schemas import TaskAccepted

# One line of printable text: a header can't carry CR or LF (header injection).
Subject = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Body = Annotated[str, StringConstraints(min_length=1, max_length=100_000, pattern=r"^[^\x00]*$")]
UserId = Annotated[int, Field(ge=1, le=MAX_JSON_ID)]


class TestEmailRequest(InputModel):
    to: Email | None = Field(default=None, description="Default: your own address")


class CampaignCreate(InputModel):
    subject: Subject
    body_text: Body
    body_html: Body | None = Field(
        default=None, description="Trusted HTML from an admin; default: the text as paragraphs"
    )
    user_ids: list[UserId] | None = Field(
        default=None,
        min_length=1,
        # Below JSON_MAX_ITEMS (10,000 values in a body) with room for the other fields: a
        # list the schema allows must never meet the JSON cap's 413 first.
        max_length=5_000,
        description="Explicit recipients (the active, verified users among them); default (left"
        " out): every active, verified user",
    )


class CampaignRead(APIModel):
    id: int
    subject: str
    status: CampaignStatus
    created_by: int | None
    task_id: str | None
    total: int | None
    sent: int
    failed: int
    pending: int
    cancelled: int
    created_at: datetime
    finished_at: datetime | None


class CampaignAccepted(TaskAccepted):
    campaign_id: int
    campaign_url: str


class FreeMailRequest(InputModel):
    """A free-form mail (POST /api/v1/email/send)."""

    to: list[Email] | None = Field(
        default=None,
        min_length=1,
        # The ceiling of EMAIL_SEND_MAX_RECIPIENTS (default 50), which binds first when lower.
        max_length=200,
        description="Admins only: the recipients, at most EMAIL_SEND_MAX_RECIPIENTS (duplicates"
        " count once); default (left out): your own address, which must be verified",
    )
    subject: Subject
    text: Body = Field(description="The plain-text part (at most EMAIL_SEND_MAX_BODY_CHARS)")
    html: Body | None = Field(
        default=None,
        description="The HTML part, sent as written (only to yourself, or by an admin); default:"
        " the text as paragraphs",
    )


class MailQueued(APIModel):
    """The outbox rows made, one per recipient; they go out in the background."""

    email_ids: list[int]
    recipients: list[str]
