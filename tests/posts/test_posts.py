"""Posts and comments through the in-process app, on SQLite and PostgreSQL."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, inspect, select, text
from sqlalchemy.orm import selectinload

from app.auth.models import Role, User
from app.posts.models import Post
from tests.support.assertions import assert_envelope
from tests.support.factories import Account, Factory
from tests.support.settings import BuildClient

POSTS = "/api/v1/posts/"
# Behaviour that is the same SQL on both backends runs on SQLite only (the suite's time budget);
# the listing's query and the full-text column run on both.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def _post(client: httpx.AsyncClient, author: Account, **fields: Any) -> dict[str, Any]:
    body = {"title": "Hello", "body": "First post", **fields}
    response = await client.post(POSTS, json=body, headers=author.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def _comment(
    client: httpx.AsyncClient, author: Account, post_id: int, body: str = "Nice"
) -> dict[str, Any]:
    response = await client.post(
        f"{POSTS}{post_id}/comments/", json={"body": body}, headers=author.headers
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


@contextmanager
def counting_statements(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the app's engine sends for this task (the in-process client runs
    the request in it) while the block runs; background pollers' statements are not counted."""
    statements: list[str] = []
    engine = app.state.services.engine.sync_engine
    task = asyncio.current_task()

    def record(*args: Any) -> None:
        if asyncio.current_task() is task:
            statements.append(args[2])  # (conn, cursor, statement, parameters, context, many)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_authors_write_and_anyone_reads_with_comment_counts(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    author, reader = await factory.account(), await factory.account()
    post = await _post(client, author, title="Moving day", body="We moved to Osaka.")
    assert post["author_id"] == author.id
    assert post["author_username"] == author.username
    assert post["comment_count"] == 0
    await _comment(client, reader, post["id"], "Congratulations!")
    await _comment(client, author, post["id"], "Thanks")
    other = await _post(client, reader, title="Quiet one")

    read = (await client.get(f"{POSTS}{post['id']}")).json()  # public: no token
    assert read["comment_count"] == 2
    listing = (await client.get(POSTS)).json()
    assert [(p["id"], p["comment_count"]) for p in listing["items"]] == [
        (other["id"], 0),
        (post["id"], 2),
    ]
    assert listing["next_cursor"] is None
    mine = (await client.get(POSTS, params={"author_id": reader.id})).json()
    assert [p["id"] for p in mine["items"]] == [other["id"]]

    edited = await client.patch(
        f"{POSTS}{post['id']}", json={"body": "We moved to Kyoto."}, headers=author.headers
    )
    assert edited.status_code == 200
    assert (edited.json()["title"], edited.json()["body"]) == ("Moving day", "We moved to Kyoto.")
    assert edited.json()["comment_count"] == 2


@sqlite_only
async def test_only_the_author_or_a_moderator_changes_posts_and_comments(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    author, stranger = await factory.account(), await factory.account()
    admin = await factory.account(Role.ADMIN)
    post = await _post(client, author)
    comment = await _comment(client, author, post["id"])
    post_path = f"{POSTS}{post['id']}"
    comment_path = f"{post_path}/comments/{comment['id']}"

    for response in (
        await client.patch(post_path, json={"title": "Hijacked"}, headers=stranger.headers),
        await client.delete(post_path, headers=stranger.headers),
        await client.patch(comment_path, json={"body": "Hijacked"}, headers=stranger.headers),
        await client.delete(comment_path, headers=stranger.headers),
    ):
        assert_envelope(response, 403, "forbidden")
    assert_envelope(await client.delete(post_path), 401, "unauthorized")
    assert (await client.get(post_path)).json()["title"] == "Hello"

    moderated = await client.patch(comment_path, json={"body": "[removed]"}, headers=admin.headers)
    assert moderated.json()["body"] == "[removed]"
    assert moderated.json()["author_id"] == author.id  # moderation keeps the author
    assert (await client.delete(comment_path, headers=admin.headers)).status_code == 204
    assert_envelope(await client.delete(comment_path, headers=admin.headers), 404, "not_found")

    await _comment(client, stranger, post["id"])
    assert (await client.delete(post_path, headers=author.headers)).status_code == 204
    assert_envelope(await client.get(post_path), 404, "not_found")
    assert_envelope(await client.get(f"{post_path}/comments/"), 404, "not_found")


@sqlite_only
async def test_a_comment_is_reached_only_through_its_own_post(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    author = await factory.account()
    first, second = await _post(client, author), await _post(client, author)
    comment = await _comment(client, author, first["id"])
    wrong = f"{POSTS}{second['id']}/comments/{comment['id']}"
    assert_envelope(
        await client.patch(wrong, json={"body": "x"}, headers=author.headers), 404, "not_found"
    )
    missing = await client.post(
        f"{POSTS}999999/comments/", json={"body": "x"}, headers=author.headers
    )
    assert_envelope(missing, 404, "not_found")


@sqlite_only
async def test_comments_page_by_cursor_newest_first(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    author = await factory.account()
    post = await _post(client, author)
    ids = [(await _comment(client, author, post["id"], f"c{n}"))["id"] for n in range(5)]
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"{POSTS}{post['id']}/comments/", params=params)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert cursor is None
    bad = await client.get(f"{POSTS}{post['id']}/comments/", params={"cursor": "nonsense"})
    assert_envelope(bad, 422, "validation_error")


async def test_a_page_of_posts_costs_the_same_statements_whatever_its_size(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    author, commenter = await factory.account(), await factory.account()
    first = await _post(client, author)
    await _comment(client, commenter, first["id"])

    with counting_statements(app) as one_post:
        page = (await client.get(POSTS, params={"limit": 50})).json()
    assert len(page["items"]) == 1

    for n in range(11):
        post = await _post(client, author if n % 2 else commenter, title=f"Post {n}")
        for _ in range(n % 3):
            await _comment(client, commenter, post["id"])
    with counting_statements(app) as twelve_posts:
        page = (await client.get(POSTS, params={"limit": 50})).json()
    assert len(page["items"]) == 12
    assert sum(p["comment_count"] for p in page["items"]) == 1 + sum(n % 3 for n in range(11))
    assert len(one_post) == len(twelve_posts) == 1, twelve_posts


@sqlite_only
async def test_user_posts_is_a_relationship(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI
) -> None:
    author = await factory.account()
    ids = [(await _post(client, author, title=f"T{n}"))["id"] for n in range(3)]
    await _post(client, await factory.account())
    user_posts = inspect(User).relationships["posts"].class_attribute
    async with app.state.services.sessionmaker() as session:
        user = (
            await session.execute(
                select(User).where(User.id == author.id).options(selectinload(user_posts))
            )
        ).scalar_one()
        posts: list[Post] = user.__dict__["posts"]
    assert [p.id for p in posts] == ids


async def test_posts_have_a_full_text_column_on_postgresql_only(
    client: httpx.AsyncClient, factory: Factory, app: FastAPI, backend: str
) -> None:
    author = await factory.account()
    await _post(client, author, title="Cherry blossoms", body="Along the river")
    later = await _post(client, author, title="Cherry blossoms", body="Seen from a bridge")
    query = text(
        "SELECT id FROM posts WHERE search_vector @@ to_tsquery('english', :q) ORDER BY id"
    )
    async with app.state.services.engine.connect() as connection:
        if backend == "sqlite":
            columns = await connection.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("posts")}
            )
            assert "search_vector" not in columns
            return
        assert len((await connection.execute(query, {"q": "blossom"})).all()) == 2
        assert (await connection.execute(query, {"q": "run"})).all() == []  # edited below
        plan = await connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_posts_search_vector'")
        )
        assert "gin" in plan.scalar_one().lower()
    edited = await client.patch(
        f"{POSTS}{later['id']}", json={"body": "Running late"}, headers=author.headers
    )
    assert edited.status_code == 200
    async with app.state.services.engine.connect() as connection:
        # Generated: the vector follows the edit with no code of ours.
        assert (await connection.execute(query, {"q": "run"})).scalars().all() == [later["id"]]


BAD_POSTS: list[tuple[dict[str, object], str]] = [
    ({"title": ""}, "body.title"),
    ({"title": "x" * 201}, "body.title"),
    ({"body": "a\x00b"}, "body.body"),
    ({"body": "x" * 20_001}, "body.body"),
    ({"author_id": 1}, "body.author_id"),
]


@sqlite_only
async def test_bad_posts_are_refused(client: httpx.AsyncClient, factory: Factory) -> None:
    author = await factory.account()
    for payload, field in BAD_POSTS:
        response = await client.post(
            POSTS, json={"title": "ok", "body": "ok", **payload}, headers=author.headers
        )
        error = assert_envelope(response, 422, "validation_error")
        assert field in {d["field"] for d in error["details"]}  # type: ignore[attr-defined]
    assert (await client.get(POSTS)).json()["items"] == []


async def test_writes_are_rate_limited_per_user_and_bounded_by_settings(
    build_client: BuildClient,
) -> None:
    async with build_client(
        rate_limit_post_write="2/minute",
        rate_limit_comment_write="1/minute",
        post_body_max_chars=10,
        comment_body_max_chars=5,
    ) as (app, client):
        factory = Factory(client, app)
        author, other = await factory.account(), await factory.account()
        long_body = await client.post(
            POSTS, json={"title": "t", "body": "x" * 11}, headers=author.headers
        )
        error = assert_envelope(long_body, 422, "validation_error")
        assert [d["field"] for d in error["details"]] == ["body.body"]  # type: ignore[attr-defined]
        post = await client.post(
            POSTS, json={"title": "t", "body": "x" * 10}, headers=author.headers
        )
        assert post.status_code == 201
        assert post.headers["X-RateLimit-Remaining"] == "0"  # the refused write counted too
        refused = await client.post(POSTS, json={"title": "t", "body": "x"}, headers=author.headers)
        assert_envelope(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
        # Per user: another author still writes; comments have their own budget.
        assert (await _post(client, other, body="x"))["author_id"] == other.id
        post_id = post.json()["id"]
        await _comment(client, author, post_id, "short")
        too_many = await client.post(
            f"{POSTS}{post_id}/comments/", json={"body": "again"}, headers=author.headers
        )
        assert_envelope(too_many, 429, "rate_limited")
