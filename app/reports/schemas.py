from datetime import date, timedelta
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from app.core.db import MAX_JSON_ID, utcnow
from app.core.schemas import APIModel, InputModel

# One report covers at most a year (a leap year included): bounds the work of one task.
MAX_REPORT_DAYS = 366


class ReportRequest(InputModel):
    start: date = Field(description="First day (UTC), inclusive")
    end: date = Field(description="Last day (UTC), inclusive; not after today")

    @model_validator(mode="after")
    def _bounded_past_range(self) -> Self:
        today = utcnow().date()
        if self.start > self.end:
            raise ValueError("start must not be after end")
        if self.end > today:
            raise ValueError("end must not be after today (UTC): the future has no activity")
        if (self.end - self.start) >= timedelta(days=MAX_REPORT_DAYS):
            raise ValueError(f"a report covers at most {MAX_REPORT_DAYS} days")
        return self


class DayActivity(APIModel):
    day: date
    signups: int
    active_users: int  # distinct users who started a session that day
    sessions: int  # logins (each login starts one session)
    items_created: int
    files_stored: int  # uploads, image variants and generated reports alike


class ActivitySummary(APIModel):
    start: date
    end: date
    days: int
    signups: int
    active_users: int  # distinct over the whole range, not the sum of the days
    sessions: int
    items_created: int
    files_stored: int
    users_at_end: int  # accounts created up to the end of the range


class ReportFile(APIModel):
    file_id: int
    format: str
    filename: str
    download_url: str
    size: int


def _json_integer(value: object) -> object:
    """A JSON integer, as the schema says: 3 or 3.0, never `true` (user 1) or "3"."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# The bounds before the validator: so they stay on the integer, and in the document.
UserRef = Annotated[int, Field(ge=1, le=MAX_JSON_ID), BeforeValidator(_json_integer)]
Days = Annotated[int, Field(ge=1, le=MAX_REPORT_DAYS), BeforeValidator(_json_integer)]


class UserActivityRequest(InputModel):
    user_id: UserRef | None = Field(
        default=None, description="Whose activity (admins: anyone); default: yours"
    )
    days: Days = Field(
        default=30,
        description="The last N UTC days, today included; at most USER_REPORT_MAX_DAYS (90)",
    )
