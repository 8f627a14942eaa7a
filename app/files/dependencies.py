"""Load-or-raise dependencies for files, and the storage the lifespan opened."""

from typing import Annotated

from fastapi import Depends, Request

from app.auth.dependencies import CurrentPrincipal
from app.core.db import SessionDep
from app.core.schemas import PrimaryKey
from app.core.storage import Storage
from app.files import service
from app.files.models import StoredFile


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def readable_file(
    file_id: PrimaryKey, viewer: CurrentPrincipal, session: SessionDep
) -> StoredFile:
    return await service.get_readable(session=session, file_id=file_id, viewer=viewer)


StorageDep = Annotated[Storage, Depends(get_storage)]
ReadableFile = Annotated[StoredFile, Depends(readable_file)]
