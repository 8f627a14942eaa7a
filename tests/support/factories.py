"""Builders for test data, through the public API wherever the API can do it."""

import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from app.auth.models import AuthSession, Role, User
from app.auth.schemas import UserPrivate

DEFAULT_PASSWORD = "Correct-horse-1"
_counter = itertools.count(1)


@dataclass
class Account:
    id: int
    username: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Factory:
    def __init__(self, client: httpx.AsyncClient, app: FastAPI) -> None:
        self.client = client
        self.app = app

    @property
    def api(self) -> str:
        """The app's API_V1_PREFIX: a factory works against any app (read once it started)."""
        prefix: str = self.app.state.services.settings.api_v1_prefix
        return prefix

    async def register(self, username: str | None = None, **fields: Any) -> dict[str, Any]:
        """A new account through the API, as the API would show it to its owner. Sign-up
        answers 202 alike for new and taken addresses, so the account is read back from the
        database: a login would start a session and spend login budgets tests count."""
        n = next(_counter)
        username = username or f"user{n}"
        body = {
            "username": username,
            "email": f"{username.lower()}@example.com",
            "password": DEFAULT_PASSWORD,
            "password_confirm": DEFAULT_PASSWORD,
            **fields,
        }
        response = await self.client.post(f"{self.api}/auth/register", json=body)
        assert response.status_code == 202, response.text
        async with self.app.state.services.sessionmaker() as session:
            user = await session.scalar(select(User).where(User.username == username))
            assert user is not None, f"{body['email']} already had an account"
            return UserPrivate.model_validate(user).model_dump(mode="json")

    async def login(
        self, login: str, password: str = DEFAULT_PASSWORD, scope: str = ""
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"{self.api}/auth/token", data={"username": login, "password": password, "scope": scope}
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def account(self, role: Role = Role.USER, username: str | None = None) -> Account:
        user = await self.register(username)
        if role is not Role.USER:
            await self.set_fields(user["id"], role=role)
        tokens = await self.login(user["username"])
        return Account(
            id=user["id"],
            username=user["username"],
            email=user["email"],
            password=DEFAULT_PASSWORD,
            access_token=tokens["access_token"],
            refresh_token=tokens["refresh_token"],
        )

    async def set_fields(self, user_id: int, **values: Any) -> None:
        """Change a user behind the API's back (roles, flags, hashes) for test setup."""
        async with self.app.state.services.sessionmaker() as session:
            await session.execute(update(User).where(User.id == user_id).values(**values))
            await session.commit()

    async def item(self, account: Account, **fields: Any) -> dict[str, Any]:
        body = {"title": f"Item {next(_counter)}", "price": "10.00", "currency": "USD", **fields}
        response = await self.client.post(f"{self.api}/items/", json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data


def login_row(user_id: int, at: datetime) -> AuthSession:
    """A session row as a login at `at` leaves it: for counting logins on chosen days."""
    return AuthSession(
        id=uuid.uuid4().hex,
        user_id=user_id,
        created_at=at,
        expires_at=at + timedelta(days=14),
        scopes="",
    )
