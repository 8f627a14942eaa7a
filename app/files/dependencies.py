"""Load-or-raise dependencies for files (`StorageDep` is in app.core.dependencies)."""

from typing import Annotated

from fastapi import Depends

from app.auth.dependencies import CurrentPrincipal
from app.core.dependencies import SessionDep, ShortSessionDep
from app.core.schemas import PrimaryKey
from app.files import service
from app.files.models import StoredFile


async def readable_file(
    file_id: PrimaryKey, viewer: CurrentPrincipal, session: SessionDep
) -> StoredFile:
    return await service.get_readable(session=session, file_id=file_id, viewer=viewer)


async def streamable_file(
    file_id: PrimaryKey, viewer: CurrentPrincipal, session: ShortSessionDep
) -> StoredFile:
    """`readable_file` whose session is closed before the body is sent (its columns stay
    loaded): a download holds no database connection while the client reads."""
    return await service.get_readable(session=session, file_id=file_id, viewer=viewer)


ReadableFile = Annotated[StoredFile, Depends(readable_file)]
StreamableFile = Annotated[StoredFile, Depends(streamable_file)]
