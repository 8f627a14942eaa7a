"""app.core.repository on a migrated database: the generic CRUD and the unit of work."""

from decimal import Decimal

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.models import User
from app.core.repository import Repository, unit_of_work
from app.items.models import Currency, Item
from tests.support.factories import Factory

# Behaviour is the same on both backends (plain SQL): SQLite only keeps the suite fast.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

items = Repository(Item, order_columns={"price": Item.price, "title": Item.title})
users = Repository(User)


def _sessionmaker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = app.state.services.sessionmaker
    return maker


async def test_crud_filters_order_count_and_soft_delete(app: FastAPI, factory: Factory) -> None:
    owner = await factory.account()
    async with _sessionmaker(app)() as session:
        async with unit_of_work(session):
            for title, price in (("b", "3.00"), ("a", "1.00"), ("c", "2.00")):
                row = await items.create(
                    session, title=title, price=Decimal(price), currency=Currency.JPY,
                    owner_id=owner.id,
                )  # fmt: skip
                assert row.id is not None  # flushed: the id is there before the commit
        listed = await items.list(session, order_by="-price")
        assert [i.title for i in listed] == ["b", "c", "a"]
        cheap = await items.list(session, where=[Item.price < 3], order_by="title", limit=1)
        assert [i.title for i in cheap] == ["a"]
        assert await items.count(session, where=[Item.price >= 2]) == 2

        first = listed[0]
        async with unit_of_work(session):
            await items.update(session, first, {"title": "renamed"})
            assert await items.soft_delete(session, first)
        assert not await items.soft_delete(session, first)  # already deleted: nothing changes
        assert await items.get(session, first.id) is None
        deleted = await items.get(session, first.id, include_deleted=True)
        assert deleted is not None
        assert deleted.title == "renamed"
        assert await items.count(session) == 2
        assert await items.count(session, include_deleted=True) == 3
        async with unit_of_work(session):  # for good, soft-deleted or not
            await items.delete(session, deleted)
        assert await items.get(session, first.id, include_deleted=True) is None
        assert await items.count(session, include_deleted=True) == 2

        with pytest.raises(ValueError, match="can't be ordered"):
            await items.list(session, order_by="owner_id")
        with pytest.raises(AttributeError):
            await items.update(session, first, {"no_such_column": 1})
        account = await users.get(session, owner.id)
        assert account is not None
        with pytest.raises(TypeError, match="no deleted_at"):
            await users.soft_delete(session, account)


async def test_unit_of_work_rolls_back_and_runs_callbacks_only_after_commit(
    app: FastAPI, factory: Factory
) -> None:
    owner = await factory.account()
    ran: list[str] = []

    async def note() -> None:
        ran.append("after commit")

    async with _sessionmaker(app)() as session:

        async def failing_request() -> None:
            async with unit_of_work(session) as work:
                await items.create(
                    session, title="lost", price=Decimal(1), currency=Currency.JPY,
                    owner_id=owner.id,
                )  # fmt: skip
                work.after_commit(note)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await failing_request()
        assert ran == []
        assert await items.count(session) == 0

        async def fails() -> None:
            raise OSError("cache down")

        async with unit_of_work(session) as work:
            await items.create(
                session, title="kept", price=Decimal(1), currency=Currency.JPY, owner_id=owner.id
            )
            work.after_commit(fails)  # logged; neither undoes the commit nor stops the next
            work.after_commit(note)
    assert ran == ["after commit"]
    async with _sessionmaker(app)() as session:
        assert [i.title for i in await items.list(session)] == ["kept"]
