"""GET /api/v1/search: ranked, highlighted, only what the caller may see, on both backends."""

import httpx
import pytest

from app.auth.models import Role
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import BuildClient

SEARCH = "/api/v1/search"


async def _article(client: httpx.AsyncClient, editor: Account, **body: object) -> int:
    response = await client.post("/api/v1/articles/", json=body, headers=editor.headers)
    assert response.status_code == 201, response.text
    article_id: int = response.json()["id"]
    return article_id


async def test_search_ranks_highlights_and_hides_what_the_caller_may_not_see(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    owner = await factory.account()
    editor = await factory.account(Role.EDITOR)
    in_title = await factory.item(owner, title="Volcanic <b>glass</b> bowl", description="Made")
    in_text = await factory.item(owner, title="Bowl", description="From volcanic sand, fired")
    deleted = await factory.item(owner, title="Volcanic pumice stone")
    assert (
        await client.delete(f"/api/v1/items/{deleted['id']}", headers=owner.headers)
    ).status_code == 204
    published = await _article(
        client, editor, title="Volcanoes of Kyushu", body="Volcanic soil", status="published"
    )
    draft = await _article(client, editor, title="Volcanic draft", body="not yet")

    anonymous = await client.get(SEARCH, params={"q": "volcanic"})
    assert anonymous.status_code == 200, anonymous.text
    hits = anonymous.json()["results"]
    found = [(hit["type"], hit["id"]) for hit in hits]
    assert ("items", deleted["id"]) not in found
    assert ("articles", draft) not in found
    assert ("articles", published) in found
    items = [hit["id"] for hit in hits if hit["type"] == "items"]
    assert items == [in_title["id"], in_text["id"]]  # a title match outranks a body match
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    title_hit = next(hit for hit in hits if hit["id"] == in_title["id"])
    assert title_hit["title"] == "Volcanic <b>glass</b> bowl"
    assert "<mark>Volcanic</mark>" in title_hit["snippet"]
    # Stored markup never comes back live: escaped (SQLite), or dropped by ts_headline.
    assert "<b>" not in title_hit["snippet"]
    assert "glass" in title_hit["snippet"]

    as_editor = await client.get(
        SEARCH, params={"q": "volcanic", "type": "articles"}, headers=editor.headers
    )
    assert {hit["id"] for hit in as_editor.json()["results"]} == {published, draft}
    assert {hit["type"] for hit in as_editor.json()["results"]} == {"articles"}


async def test_the_index_follows_changes(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    item = await factory.item(owner, title="Copper kettle")
    path = f"/api/v1/items/{item['id']}"

    async def ids(q: str) -> list[int]:
        response = await client.get(SEARCH, params={"q": q, "type": "items"})
        return [hit["id"] for hit in response.json()["results"]]

    assert await ids("kettles") == [item["id"]]  # stemmed on both backends
    await client.patch(path, json={"title": "Brass teapot"}, headers=owner.headers)
    assert await ids("kettle") == []
    assert await ids("teapot") == [item["id"]]
    await client.delete(f"{path}?hard=true", headers=(await factory.account(Role.ADMIN)).headers)
    assert await ids("teapot") == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_queries_are_words_not_syntax(client: httpx.AsyncClient, factory: Factory) -> None:
    owner = await factory.account()
    await factory.item(owner, title="Quoted thing")
    for q in ['"', "thing OR", "NEAR(thing", "*", "thing -", "title:thing", "!!!"]:
        response = await client.get(SEARCH, params={"q": q})
        assert response.status_code == 200, (q, response.text)
    long = await client.get(SEARCH, params={"q": "x" * 201})
    assert_envelope(long, 422, "validation_error")
    wrong_type = await client.get(SEARCH, params={"q": "x", "type": "users"})
    assert_envelope(wrong_type, 422, "validation_error")


async def test_search_is_rate_limited_by_its_setting(build_client: BuildClient) -> None:
    async with build_client(rate_limit_search="2/minute", search_query_max_chars=5) as (_, c):
        first = await c.get(SEARCH, params={"q": "tea"})
        assert first.status_code == 200
        assert first.headers["X-RateLimit-Limit"] == "2"
        assert first.headers["X-RateLimit-Remaining"] == "1"
        too_long = await c.get(SEARCH, params={"q": "teapot"})
        assert_envelope(too_long, 422, "validation_error")
        assert too_long.json()["error"]["details"][0]["field"] == "query.q"
        limited = await c.get(SEARCH, params={"q": "tea"})
        assert_envelope(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["X-RateLimit-Remaining"] == "0"
