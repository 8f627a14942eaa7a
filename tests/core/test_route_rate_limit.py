"""rate_limit(): a per-route limit any route can take, with the usual headers."""

import pytest
from fastapi import Depends

from app.core.limits import rate_limit
from tests.support.assertions import assert_envelope
from tests.support.settings import BuildClient


def test_a_rate_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="rate"):
        rate_limit()
    with pytest.raises(ValueError, match="rate"):
        rate_limit("1/minute", setting="rate_limit_search")
    with pytest.raises(ValueError, match="parse"):
        rate_limit("lots")


async def test_each_route_counts_on_its_own_and_shared_names_share(
    build_client: BuildClient,
) -> None:
    async with build_client() as (app, client):
        shared = rate_limit("2/minute", name="pair")
        app.router.add_api_route("/t/a", _ok, dependencies=[Depends(rate_limit("1/minute"))])
        app.router.add_api_route("/t/b", _ok, dependencies=[Depends(rate_limit("1/minute"))])
        app.router.add_api_route("/t/c", _ok2, dependencies=[Depends(shared)])
        app.router.add_api_route("/t/d", _ok3, dependencies=[Depends(shared)])
        first = await client.get("/t/a")
        assert first.status_code == 200
        assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == (
            "1", "0"
        )  # fmt: skip
        assert 1 <= int(first.headers["X-RateLimit-Reset"]) <= 60
        assert (await client.get("/t/b")).status_code == 200  # its own counter
        limited = await client.get("/t/a")
        assert_envelope(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert (await client.get("/t/c")).status_code == 200
        assert (await client.get("/t/d")).status_code == 200
        assert_envelope(await client.get("/t/c"), 429, "rate_limited")


async def _ok() -> dict[str, bool]:
    return {"ok": True}


async def _ok2() -> dict[str, bool]:
    return {"ok": True}


async def _ok3() -> dict[str, bool]:
    return {"ok": True}
