"""Every way a bearer token can be wrong is a 401 in the envelope."""

import base64
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from app.core.security import (
    AccessClaims,
    AccessTokenVerifier,
    InvalidToken,
    create_access_token,
)
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import TEST_SECRET, make_settings


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def forge(claims: dict[str, Any], key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.fixture
async def good_claims(factory: Factory) -> dict[str, Any]:
    account = await factory.account()
    return claims_of(account.access_token)


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


async def test_valid_forgery_baseline_is_accepted(
    client: httpx.AsyncClient, good_claims: dict[str, Any]
) -> None:
    # Proves the forging helper itself works, so the refusals below are about the claim.
    assert (await me(client, forge(good_claims))).status_code == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exp": int(time.time()) - 10}, "Token has expired"),
        ({"type": "refresh"}, "Invalid token type"),
        ({"aud": "someone-else"}, "Invalid token"),
        ({"iss": "evil"}, "Invalid token"),
        ({"sub": "not-a-number"}, "Invalid token"),
        ({"sub": "999999"}, "Invalid token"),
        ({"sid": "0" * 32}, "Invalid token"),
        ({"scopes": "profile"}, "Invalid token"),
    ],
)
async def test_bad_claims_are_401(
    client: httpx.AsyncClient, good_claims: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    response = await me(client, forge({**good_claims, **change}))
    error = assert_envelope(response, 401, "unauthorized")
    assert error["message"] == message


@pytest.mark.parametrize("claim", ["sub", "jti", "type", "exp", "iat", "iss", "aud", "sid"])
async def test_missing_claim_is_401(
    client: httpx.AsyncClient, good_claims: dict[str, Any], claim: str
) -> None:
    claims = {k: v for k, v in good_claims.items() if k != claim}
    assert_envelope(await me(client, forge(claims)), 401, "unauthorized")


async def test_tampered_and_foreign_signatures_are_401(
    client: httpx.AsyncClient, good_claims: dict[str, Any]
) -> None:
    token = forge(good_claims)
    header, _payload, signature = token.split(".")
    elevated = b64({**good_claims, "scopes": ["admin", "profile"]})
    assert_envelope(await me(client, f"{header}.{elevated}.{signature}"), 401, "unauthorized")
    other_key = forge(good_claims, key="another-secret-key-of-sufficient-length-000")
    assert_envelope(await me(client, other_key), 401, "unauthorized")


async def test_alg_none_and_other_algorithms_are_401(
    client: httpx.AsyncClient, good_claims: dict[str, Any]
) -> None:
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good_claims)}."
    assert_envelope(await me(client, unsigned), 401, "unauthorized")
    hs512 = forge(good_claims, algorithm="HS512")
    assert_envelope(await me(client, hs512), 401, "unauthorized")


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer " + "a" * 5000],
)
async def test_malformed_authorization_headers_are_401(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get("/api/v1/users/me", headers={"Authorization": header})
    assert_envelope(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_missing_scope_is_403_naming_it(client: httpx.AsyncClient, factory: Factory) -> None:
    user = await factory.register()
    tokens = await factory.login(user["username"], scope="profile")
    response = await client.post(
        "/api/v1/items/",
        json={"title": "t", "price": "1"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    error = assert_envelope(response, 403, "forbidden")
    assert error["message"] == "Missing scope: items:write"


def test_verifier_remembers_tokens_but_still_checks_expiry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, access_token_expire_minutes=1)
    verifier = AccessTokenVerifier(settings, max_entries=2)
    token, _ = create_access_token(settings, user_id=7, session_id="s" * 32, scopes=["profile"])
    first = verifier.decode(token)
    assert verifier.decode(token) is first  # remembered: no second HMAC and parse
    with pytest.raises(InvalidToken):
        verifier.decode(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    expired = AccessClaims(
        **{**asdict(first), "expires_at": datetime.now(UTC) - timedelta(seconds=1)}
    )
    verifier._verified[token] = expired  # as if the clock had moved past its expiry
    with pytest.raises(InvalidToken, match="expired"):
        verifier.decode(token)
    for n in range(5):  # bounded
        verifier.decode(create_access_token(settings, user_id=n, session_id="s" * 32, scopes=[])[0])
    assert len(verifier._verified) == 2
