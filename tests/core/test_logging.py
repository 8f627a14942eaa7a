import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from app.core.logging import AccessLog, LineHandler, configure_logging
from app.core.request_context import REQUEST_ID
from tests.support.factories import Factory
from tests.support.settings import BuildClient, make_settings


@pytest.fixture
def json_logs(tmp_path: Path) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    output = io.StringIO()
    configure_logging(make_settings(tmp_path, log_format="json"), stream=output)
    try:
        yield output
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        structlog.reset_defaults()
        logging.getLogger("uvicorn.access").disabled = False


def lines(output: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.getvalue().splitlines() if line.strip()]


async def test_access_log_is_json_with_request_id_user_and_route(
    build_client: BuildClient, json_logs: io.StringIO
) -> None:
    async with build_client() as (app, client):
        factory = Factory(client, app)
        account = await factory.account()
        item = await factory.item(account)
        json_logs.seek(0)
        json_logs.truncate()
        response = await client.get(
            f"/api/v1/items/{item['id']}?debug=secret-query",
            headers={**account.headers, "X-Request-ID": "req-42"},
        )
        assert response.status_code == 200
        records = lines(json_logs)
    access = [r for r in records if r.get("event") == "request"]
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "req-42"
    assert entry["route"] == "/api/v1/items/{item_id}"  # the full template, no raw ids
    assert entry["status"] == 200
    assert entry["user_id"] == account.id
    assert entry["method"] == "GET"
    assert isinstance(entry["duration_ms"], float)
    assert entry["level"] == "info"
    everything = json.dumps(records)
    assert account.access_token not in everything
    assert "secret-query" not in everything


async def test_passwords_and_tokens_never_reach_the_log(
    build_client: BuildClient, json_logs: io.StringIO
) -> None:
    structlog.stdlib.get_logger("app.test").warning(
        "careless", password="Hunter2-secret", refresh_token="r-123", user="ann"
    )
    async with build_client() as (app, client):
        factory = Factory(client, app)
        await factory.register("logged", password="Pl41n-Secret", password_confirm="Pl41n-Secret")
        await client.post(
            "/api/v1/auth/token", data={"username": "logged", "password": "Wr0ng-Pass"}
        )
    output = json_logs.getvalue()
    for secret in ("Hunter2-secret", "r-123", "Pl41n-Secret", "Wr0ng-Pass"):
        assert secret not in output
    careless = next(json.loads(line) for line in output.splitlines() if '"careless"' in line)
    assert careless["password"] == "[redacted]"
    assert careless["user"] == "ann"


async def test_unhandled_errors_are_logged_with_the_request_id(
    build_client: BuildClient, json_logs: io.StringIO
) -> None:
    async with build_client() as (app, client):

        @app.get("/explode")
        async def explode() -> None:
            raise RuntimeError("kaboom")

        app.router.routes.insert(0, app.router.routes.pop())
        response = await client.get("/explode", headers={"X-Request-ID": "req-500"})
        assert response.status_code == 500
    records = lines(json_logs)
    error = next(r for r in records if r.get("event") == "unhandled error")
    assert error["request_id"] == "req-500"
    assert "kaboom" in str(error["exception"])
    access = next(r for r in records if r.get("event") == "request")
    assert access["status"] == 500


async def test_access_log_can_be_switched_off(
    build_client: BuildClient, json_logs: io.StringIO
) -> None:
    async with build_client(access_log=False) as (_, client):
        assert (await client.get("/api/v1/items/")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    assert [r for r in lines(json_logs) if r.get("event") == "request"] == []


@pytest.mark.parametrize("shared_state", ["memory"], indirect=True)  # no backend in it
async def test_access_log_respects_the_level(
    build_client: BuildClient, json_logs: io.StringIO
) -> None:
    async with build_client() as (_, client):
        logging.getLogger().setLevel(logging.WARNING)  # restored by the fixture
        assert (await client.get("/api/v1/items/")).status_code == 200
        logging.getLogger().setLevel(logging.INFO)
        assert (await client.get("/nowhere")).status_code == 404
    access = [r for r in lines(json_logs) if r.get("event") == "request"]
    assert [r["status"] for r in access] == [404]


def test_the_access_log_writes_what_a_structlog_call_writes(json_logs: io.StringIO) -> None:
    """AccessLog runs the configured processors itself: same keys, same order, same values."""
    fields = {"method": "GET", "route": "/r/{id}", "status": 200, "duration_ms": 1.5,
              "client": "127.0.0.1", "user_id": 7}  # fmt: skip
    token = REQUEST_ID.set("req-7")
    try:
        structlog.stdlib.get_logger("app.access").info("request", **fields)
        AccessLog("app.access").info({**fields, "event": "request"})
    finally:
        REQUEST_ID.reset(token)
    ordinary, ours = lines(json_logs)[-2:]
    assert str(ordinary.pop("timestamp")) <= str(ours.pop("timestamp"))
    assert list(ours.items()) == list(ordinary.items())
    assert ours["request_id"] == "req-7"


@contextlib.contextmanager
def only_ours() -> Iterator[LineHandler]:
    """The root's handlers as a server has them: configure_logging's alone. Used inside a test
    body: pytest adds its capture to the root at the start of each test phase."""
    root = logging.getLogger()
    saved = root.handlers[:]
    (ours,) = [h for h in saved if isinstance(h, LineHandler)]
    root.handlers = [ours]
    try:
        yield ours
    finally:
        root.handlers = saved


ACCESS_FIELDS = {"method": "GET", "route": "/r/{id}", "status": 200, "duration_ms": 1.5,
                 "client": "127.0.0.1", "user_id": 7}  # fmt: skip


def test_the_access_log_writes_directly_what_the_record_path_writes(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = AccessLog("app.access")
    token = REQUEST_ID.set("req-8")
    with only_ours() as ours_handler:
        structlog.stdlib.get_logger("app.access").info("request", **ACCESS_FIELDS)

        def no_records(*args: object, **kwargs: object) -> logging.LogRecord:
            raise AssertionError("the direct path makes no LogRecord")

        monkeypatch.setattr(logging.Logger, "makeRecord", no_records)
        access.info({**ACCESS_FIELDS, "event": "request"})
        monkeypatch.undo()
        assert access._sole_handler() is ours_handler
    REQUEST_ID.reset(token)
    ordinary, ours = lines(json_logs)[-2:]
    assert str(ordinary.pop("timestamp")) <= str(ours.pop("timestamp"))
    assert list(ours.items()) == list(ordinary.items())


def test_anything_else_listening_gets_access_lines_as_records(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second handler (a test's capture, a shipper), a filter, a logger that stops
    propagating, or a hook on the standard library's dispatch (Sentry's breadcrumbs) each see
    the line as they would any other logger's: the direct path is only for nothing but ours."""
    access = AccessLog("app.access")
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    with only_ours():
        logging.getLogger().addHandler(Collect())
        access.info({**ACCESS_FIELDS, "event": "request"})
    assert [record.name for record in seen] == ["app.access"]
    parent = logging.getLogger("app")  # a handler on a logger between it and the root
    collector = Collect()
    parent.addHandler(collector)
    try:
        with only_ours():
            access.info({**ACCESS_FIELDS, "event": "request"})
    finally:
        parent.removeHandler(collector)
    assert [record.name for record in seen] == ["app.access"] * 2

    hooked: list[str] = []
    original = logging.Logger.callHandlers

    def hook(logger: logging.Logger, record: logging.LogRecord) -> None:
        hooked.append(record.name)
        original(logger, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", hook)
    with only_ours():
        access.info({**ACCESS_FIELDS, "event": "request"})
    assert hooked == ["app.access"]
    monkeypatch.undo()

    dropped: list[str] = []

    def drop(record: logging.LogRecord) -> bool:
        dropped.append(record.name)
        return False

    access.stdlib.addFilter(drop)
    try:
        with only_ours():
            access.info({**ACCESS_FIELDS, "route": "/filtered", "event": "request"})
    finally:
        access.stdlib.removeFilter(drop)
    assert dropped == ["app.access"]
    assert [r["route"] for r in lines(json_logs) if r.get("event") == "request"] == ["/r/{id}"] * 3


def test_a_failing_stream_never_fails_the_request(
    json_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = io.StringIO()
    broken.close()
    access = AccessLog("app.access")
    with only_ours() as handler:
        handler.stream = broken
        access.info({**ACCESS_FIELDS, "event": "request"})  # does not raise
        assert access._sole_handler() is handler  # the direct path was the one taken
    assert "ValueError" in capsys.readouterr().err  # reported as the standard library does


def test_json_lines_take_any_value_and_lose_none(json_logs: io.StringIO) -> None:
    """The JSON renderer's encoder (orjson) writes dates, UUIDs and non-string keys as values;
    a line it refuses (an integer over 64 bits) is still written, by the standard library."""
    when = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    ident = uuid.UUID(int=7)
    log = structlog.stdlib.get_logger("app.test")
    log.info("typed", when=when, ident=ident, counts={3: "three"})
    log.info("huge", value=2**70, password="Leaky-secret-9")
    typed, huge = lines(json_logs)[-2:]
    assert typed["when"] == "2026-12-04T19:00:00+00:00"
    assert typed["ident"] == str(ident)
    assert typed["counts"] == {"3": "three"}
    assert huge["value"] == 2**70
    assert huge["password"] == "[redacted]"


def test_stdlib_extras_are_redacted_too(json_logs: io.StringIO) -> None:
    logging.getLogger("some.library").warning(
        "login attempt", extra={"password": "Leaky-secret-9", "color_message": "\x1b[36mx"}
    )
    record = lines(json_logs)[-1]
    assert record["password"] == "[redacted]"
    assert "color_message" not in record
    assert "Leaky-secret-9" not in json_logs.getvalue()
