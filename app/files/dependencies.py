"""Load-or-raise dependencies for files (`StorageDep` is in app.core.dependencies)."""

from typing import Annotated

from fastapi import Depends

from app.auth.dependencies import CurrentPrincipal
from app.core.dependencies import SessionDep
from app.core.schemas import PrimaryKey
from app.files import service
from app.files.models import StoredFile


async def readable_file(
    file_id: PrimaryKey, viewer: CurrentPrincipal, session: SessionDep
) -> StoredFile:
    return await service.get_readable(session=session, file_id=file_id, viewer=viewer)


ReadableFile = Annotated[StoredFile, Depends(readable_file)]
