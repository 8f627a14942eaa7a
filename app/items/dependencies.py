"""Load-or-raise dependencies, chained so routes never repeat their 404 and 403 checks."""

from typing import Annotated

from fastapi import Depends

from app.auth.dependencies import ItemWriter, RequirePermissions
from app.auth.permissions import Permission, has_permission
from app.core.dependencies import SessionDep
from app.core.schemas import PrimaryKey
from app.items import service
from app.items.errors import NotItemOwner
from app.items.models import Item


async def owned_item(item_id: PrimaryKey, user: ItemWriter, session: SessionDep) -> Item:
    item = await service.get_visible(session=session, item_id=item_id, viewer=user)
    if item.owner_id != user.id and not has_permission(user, Permission.MANAGE_ANY_ITEM):
        raise NotItemOwner()
    return item


OwnedItem = Annotated[Item, Depends(owned_item)]


_may_hard_delete = RequirePermissions(Permission.HARD_DELETE_ITEM)


async def hard_delete_requested(user: ItemWriter, hard: bool = False) -> bool:
    """`?hard=true` removes an item for good: it needs `items:hard_delete`."""
    if hard:
        _may_hard_delete.check(user)
    return hard


HardDelete = Annotated[bool, Depends(hard_delete_requested)]
