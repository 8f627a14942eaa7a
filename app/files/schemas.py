from datetime import datetime

from pydantic import Field

from app.core.schemas import APIModel


class FileRead(APIModel):
    id: int
    filename: str = Field(description="The sanitized name; storage keys never derive from it")
    content_type: str
    size: int
    sha256: str
    owner_id: int
    item_id: int | None
    created_at: datetime


class PresignedURL(APIModel):
    url: str
    expires_in: int = Field(description="Seconds the URL stays valid")
