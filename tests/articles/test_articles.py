"""Articles: public reading of published ones, writing and deleting by permission, slugs."""

import httpx
import pytest

from app.articles.service import slugify
from app.auth.models import Role
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory

ARTICLES = "/api/v1/articles/"


async def test_drafts_are_for_writers_and_published_ones_for_everyone(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    editor = await factory.account(Role.EDITOR)
    reader = await factory.account()
    draft = await client.post(
        ARTICLES, json={"title": "Spring menu", "body": "Soon"}, headers=editor.headers
    )
    assert draft.status_code == 201, draft.text
    article = draft.json()
    assert (article["status"], article["slug"], article["published_at"]) == (
        "draft", "spring-menu", None
    )  # fmt: skip
    path = f"{ARTICLES}{article['id']}"
    for headers in ({}, reader.headers):
        assert_envelope(await client.get(path, headers=headers), 404, "not_found")
        listed = await client.get(ARTICLES, params={"status": "draft"}, headers=headers)
        assert listed.json()["total"] == 0
    assert (await client.get(path, headers=editor.headers)).status_code == 200
    drafts = await client.get(ARTICLES, params={"status": "draft"}, headers=editor.headers)
    assert [a["id"] for a in drafts.json()["items"]] == [article["id"]]

    published = await client.patch(path, json={"status": "published"}, headers=editor.headers)
    assert published.json()["published_at"] is not None
    assert (await client.get(path)).json()["title"] == "Spring menu"
    by_slug = await client.get(f"{ARTICLES}by-slug/spring-menu")
    assert by_slug.json()["id"] == article["id"]
    public = (await client.get(ARTICLES)).json()
    assert [a["id"] for a in public["items"]] == [article["id"]]

    forbidden = await client.patch(path, json={"title": "Mine now"}, headers=reader.headers)
    assert assert_envelope(forbidden, 403, "forbidden")["message"] == (
        "Missing permission: articles:write"
    )
    anonymous = await client.post(ARTICLES, json={"title": "x"})
    assert_envelope(anonymous, 401, "unauthorized")
    no_delete = await client.delete(path, headers=editor.headers)
    assert assert_envelope(no_delete, 403, "forbidden")["message"] == (
        "Missing permission: articles:delete"
    )
    admin = await factory.account(Role.ADMIN)
    assert (await client.delete(path, headers=admin.headers)).status_code == 204
    assert_envelope(await client.get(path), 404, "not_found")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_slugs_are_unique(client: httpx.AsyncClient, factory: Factory) -> None:
    editor = await factory.account(Role.EDITOR)

    async def create(**body: object) -> httpx.Response:
        return await client.post(ARTICLES, json=body, headers=editor.headers)

    slugs = [(await create(title="Tea & Cakes!")).json()["slug"] for _ in range(3)]
    assert slugs == ["tea-cakes", "tea-cakes-2", "tea-cakes-3"]
    assert_envelope(await create(title="Other", slug="tea-cakes"), 409, "conflict")
    chosen = await create(title="Other", slug="other-one")
    assert chosen.json()["slug"] == "other-one"
    clash = await client.patch(
        f"{ARTICLES}{chosen.json()['id']}", json={"slug": "tea-cakes-2"}, headers=editor.headers
    )
    assert_envelope(clash, 409, "conflict")
    renamed = await client.patch(
        f"{ARTICLES}{chosen.json()['id']}", json={"title": "Renamed"}, headers=editor.headers
    )
    assert renamed.json()["slug"] == "other-one"  # links keep working
    bad = await create(title="x", slug="Not A Slug")
    assert_envelope(bad, 422, "validation_error")


def test_slugify() -> None:
    assert slugify("Crème brûlée, 2nd try") == "creme-brulee-2nd-try"
    assert slugify("日本の記事") == "article"
    assert len(slugify("word " * 100)) <= 88
    assert slugify("x" * 200) == "x" * 88
