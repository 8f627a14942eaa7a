from typing import Annotated

from fastapi import Depends

from app.auth.models import User
from app.core.dependencies import SessionDep
from app.core.schemas import PrimaryKey
from app.users import service


async def valid_user_id(user_id: PrimaryKey, session: SessionDep) -> User:
    return await service.get(session=session, user_id=user_id)


UserById = Annotated[User, Depends(valid_user_id)]
