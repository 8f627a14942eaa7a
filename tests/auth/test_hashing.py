import threading

import bcrypt
import httpx
from fastapi import FastAPI
from sqlalchemy import select

from app.auth.models import User
from app.core.security import PasswordHasher
from tests.support.factories import DEFAULT_PASSWORD, Factory


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
