from pydantic import Field

from app.core.schemas import Email, InputModel


class TestEmailRequest(InputModel):
    to: Email | None = Field(default=None, description="Default: your own address")
