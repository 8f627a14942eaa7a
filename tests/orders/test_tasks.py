"""The purge of expired order Idempotency-Keys: the task's body called directly on the app's
database (both backends: the expiry comparison is the database's); beat's entry is checked in
tests/jobs/test_schedule.py."""

from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from app.core.db import utcnow
from app.orders import service
from app.orders.models import Order
from tests.support.factories import Factory
from tests.support.orders import ORDERS, order_body


async def test_purge_clears_expired_keys_in_batches_and_keeps_the_orders(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    owner = await factory.account()
    placed = {}
    for key in ("old-1", "old-2", "old-3", "live"):
        response = await client.post(
            ORDERS, json=order_body(), headers={**owner.headers, "Idempotency-Key": key}
        )
        assert response.status_code == 201, response.text
        placed[key] = response
    expired = [placed[key].json()["id"] for key in ("old-1", "old-2", "old-3")]
    async with app.state.services.sessionmaker() as session:
        await session.execute(
            update(Order)
            .where(Order.id.in_(expired))
            .values(
                idempotency_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                updated_at=Order.updated_at,  # as placed, to compare the reads below
            )
        )
        await session.commit()

    async with app.state.services.sessionmaker() as session:
        # A batch of 2 over 3 expired keys: the loop runs past a full batch.
        purged = await service.purge_expired_keys(
            session=session, expired_before=utcnow(), batch_size=2
        )
    assert purged == 3
    async with app.state.services.sessionmaker() as session:
        rows = (await session.execute(select(Order.id, Order.idempotency_key))).all()
        keys = dict(rows)
        again = await service.purge_expired_keys(
            session=session, expired_before=utcnow(), batch_size=2
        )
    assert again == 0
    assert keys == {**dict.fromkeys(expired), placed["live"].json()["id"]: "live"}
    for key in ("old-1", "live"):  # the orders, their ETag and updated_at are untouched
        read = await client.get(f"{ORDERS}{placed[key].json()['id']}", headers=owner.headers)
        assert read.json() == placed[key].json()
        assert read.headers["etag"] == placed[key].headers["etag"]
    replay = await client.post(
        ORDERS, json=order_body(), headers={**owner.headers, "Idempotency-Key": "live"}
    )
    assert replay.headers["idempotent-replayed"] == "true"
