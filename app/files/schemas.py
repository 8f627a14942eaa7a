from datetime import datetime

from pydantic import Field

from app.core.schemas import APIModel


class VariantRead(APIModel):
    """An image made from this file (ITEMS-4, JOBS-4)."""

    file_id: int
    variant: str
    width: int | None
    height: int | None
    content_type: str
    size: int
    download_url: str


class FileRead(APIModel):
    id: int
    filename: str = Field(description="The sanitized name; storage keys never derive from it")
    content_type: str
    size: int
    sha256: str
    owner_id: int
    item_id: int | None
    created_at: datetime
    source_file_id: int | None = Field(default=None, description="Set on a derived image")
    variant: str | None = Field(default=None, description="The derived image's name")
    variants: list[VariantRead] = Field(
        default_factory=list, description="Images made from this one, once they are ready"
    )
    variants_task_id: str | None = Field(
        default=None, description="The task making this image's variants (item images)"
    )


class PresignedURL(APIModel):
    url: str
    expires_in: int = Field(description="Seconds the URL stays valid")


class StorageUsage(APIModel):
    """A user's storage against USER_STORAGE_QUOTA_BYTES and USER_MAX_FILES."""

    used_bytes: int
    quota_bytes: int
    remaining_bytes: int
    used_files: int
    quota_files: int
    remaining_files: int
