"""A page of orders costs a fixed number of SQL statements whatever its size: the orders, then
all of their lines in one `selectinload` query (no query per order). Counted with an engine
event listener on the app's own engine."""

from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.items.models import Currency
from app.orders.models import Order, OrderLine, OrderStatus
from tests.support.factories import Factory
from tests.support.queries import counted_statements

PAGE = 25


def _order(owner_id: int, n: int) -> Order:
    return Order(
        owner_id=owner_id, status=OrderStatus.PENDING, postal_code="100-0001",
        prefecture="東京都", city="千代田区", street=f"{n}-1", total_jpy=Decimal(300),
        rates_jpy={"JPY": "1"},
        lines=[
            OrderLine(name=f"line {k}", quantity=1, unit_price=Decimal(100), currency=Currency.JPY)
            for k in range(3)
        ],
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_page_costs_the_same_statements_whatever_its_size(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    async with app.state.services.sessionmaker() as session:
        session.add_all(_order(owner.id, n) for n in range(PAGE))
        await session.commit()
    engine: AsyncEngine = app.state.services.engine
    await client.get("/api/v1/orders/", params={"limit": 1}, headers=owner.headers)  # warm-up

    counts: dict[int, int] = {}
    for limit in (1, 5, PAGE):
        with counted_statements(engine) as seen:
            response = await client.get(
                "/api/v1/orders/", params={"limit": limit}, headers=owner.headers
            )
        assert response.status_code == 200
        page = response.json()["items"]
        assert len(page) == limit
        assert all(len(order["lines"]) == 3 for order in page)
        counts[limit] = len(seen)
        assert sum("order_lines" in s for s in seen) == 1  # every line of the page at once
    assert counts[1] == counts[5] == counts[PAGE] == 2, counts  # orders, then their lines
