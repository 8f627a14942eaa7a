import asyncio
import threading

import bcrypt
import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import User
from app.core.security import HasherBusy, PasswordHasher
from tests.support.assertions import assert_envelope
from tests.support.factories import DEFAULT_PASSWORD, Factory
from tests.support.settings import BuildClient


async def test_old_bcrypt_hash_verifies_and_is_upgraded(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    user = await factory.register()
    legacy = bcrypt.hashpw(DEFAULT_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    await factory.set_fields(user["id"], hashed_password=legacy)

    await factory.login(user["username"])

    async with app.state.services.sessionmaker() as session:
        stored = (await session.execute(select(User.hashed_password))).scalar_one()
    assert stored.startswith("$argon2id$")
    await factory.login(user["username"])  # and the new hash works


async def test_hashing_runs_off_the_event_loop() -> None:
    hasher = PasswordHasher(concurrency=2)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    original = hasher._hash.hash

    def recording_hash(password: str | bytes, *, salt: bytes | None = None) -> str:
        threads.append(threading.get_ident())
        return original(password, salt=salt)

    hasher._hash.hash = recording_hash  # type: ignore[method-assign]
    hashed = await hasher.hash("Some-password-1")
    assert threads
    assert loop_thread not in threads
    assert (await hasher.verify_and_update("Some-password-1", hashed))[0] is True
    assert (await hasher.verify_and_update("Some-password-1", None))[0] is False


async def test_a_full_hashing_queue_refuses_at_once_without_hashing() -> None:
    """One thread, two waiting: of 20 simultaneous verifications 3 are admitted and 17 refused
    before any work is done for them; the slots are free again afterwards."""
    hasher = PasswordHasher(concurrency=1, max_waiting=2)
    stored = await hasher.hash("Some-password-1")
    verified = 0
    original = hasher._hash.verify_and_update

    def counting(password: str | bytes, hash: str | bytes) -> tuple[bool, str | None]:
        nonlocal verified
        verified += 1
        return original(password, hash)

    hasher._hash.verify_and_update = counting  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(hasher.verify_and_update("Some-password-1", stored) for _ in range(20)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, HasherBusy)]
    assert len(refused) == 17
    assert [o for o in outcomes if not isinstance(o, HasherBusy)] == [(True, None)] * 3
    assert verified == 3
    assert refused[0].headers == {"Retry-After": "1"}
    assert (await hasher.verify_and_update("Some-password-1", stored))[0] is True


async def test_a_login_flood_gets_503_with_retry_after_never_a_queue(
    build_client: BuildClient,
) -> None:
    limits = {"password_hash_concurrency": 1, "password_hash_max_waiting_per_thread": 1}
    async with build_client(**limits) as (app, client):
        factory = Factory(client, app)
        user = await factory.register()
        form = {"username": user["username"], "password": DEFAULT_PASSWORD}
        answers = await asyncio.gather(
            *(client.post("/api/v1/auth/token", data=form) for _ in range(12))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses[:2] == [200, 200]
    assert set(statuses) == {200, 503}
    for busy in (a for a in answers if a.status_code == 503):
        assert_envelope(busy, 503, "service_unavailable")
        assert busy.headers["retry-after"] == "1"
