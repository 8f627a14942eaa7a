from pydantic import Field

from app.auth.schemas import Email
from app.core.schemas import InputModel


class TestEmailRequest(InputModel):
    to: Email | None = Field(default=None, description="Default: your own address")
