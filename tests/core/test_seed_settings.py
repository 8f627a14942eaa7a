"""The settings the seed documents expose (issue 15 item 9), each doing what it says."""

import logging
import shutil
from pathlib import Path
from typing import cast

import pytest
from pydantic import BaseModel, ValidationError

from app.auth.schemas import RegisterRequest, UserPublic
from app.core.config import VERIFIABLE_UPLOAD_EXTENSIONS
from app.core.db import create_engine
from app.core.middleware import SignedSessionMiddleware
from app.files.safety import ALLOWED_EXTENSIONS
from app.files.service import download_url
from app.items.schemas import ItemCreate
from app.jobs.celery_app import make_celery
from app.main import create_app
from app.posts.schemas import CommentCreate, PostCreate
from app.users.schemas import UserSelfUpdate
from tests.support.assertions import assert_envelope
from tests.support.factories import Factory
from tests.support.settings import asgi_client, make_settings, started_app

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_the_openapi_document_and_the_session_cookie_follow_the_settings(tmp_path: Path) -> None:
    app = create_app(
        make_settings(
            tmp_path,
            api_title="Shop API",
            api_version="2.3.4",
            api_description="The shop.",
            session_cookie_max_age_seconds=3600,
        )
    )
    info = app.openapi()["info"]
    assert (info["title"], info["version"], info["description"]) == (
        "Shop API",
        "2.3.4",
        "The shop.",
    )
    # Nothing in the app writes a session yet: the middleware is where the setting lands.
    (session,) = [m for m in app.user_middleware if m.cls is cast(object, SignedSessionMiddleware)]
    assert session.kwargs["max_age"] == 3600


def test_the_main_schemas_carry_examples_that_validate(tmp_path: Path) -> None:
    # Request bodies and a response without nulls: FastAPI drops null members from the
    # document, so an example with one would show a required field missing.
    schemas = create_app(make_settings(tmp_path)).openapi()["components"]["schemas"]
    models: dict[str, type[BaseModel]] = {
        "ItemCreate": ItemCreate,
        "RegisterRequest": RegisterRequest,
        "UserPublic": UserPublic,
        "UserSelfUpdate": UserSelfUpdate,
        "PostCreate": PostCreate,
        "CommentCreate": CommentCreate,
    }
    for name, model in models.items():
        examples = schemas[name]["examples"]
        assert examples, name
        for example in examples:
            model.model_validate(example)


def test_pool_recycle_and_sql_echo(tmp_path: Path) -> None:
    url = "postgresql://app@127.0.0.1:1/app"  # never connected to: the engine is only built
    engine = create_engine(make_settings(tmp_path, url, database_pool_recycle_seconds=120))
    assert (engine.pool._recycle, engine.echo) == (120, False)
    assert create_engine(make_settings(tmp_path, url, debug=True)).echo is True
    quiet = make_settings(tmp_path, url, debug=True, database_echo=False)
    assert create_engine(quiet).echo is False
    assert create_engine(make_settings(tmp_path, database_echo=True)).echo is True  # SQLite


def test_celery_worker_recycling_and_result_retries(tmp_path: Path) -> None:
    conf = make_celery(make_settings(tmp_path)).conf
    assert conf.worker_max_tasks_per_child == 1000
    assert (conf.result_backend_always_retry, conf.result_backend_max_retries) == (True, 3)
    conf = make_celery(
        make_settings(
            tmp_path,
            celery_worker_max_tasks_per_child=None,
            celery_result_backend_max_retries=0,
        )
    ).conf
    assert conf.worker_max_tasks_per_child is None
    assert conf.result_backend_always_retry is False


def test_upload_extensions_are_checked_at_start(tmp_path: Path) -> None:
    assert set(VERIFIABLE_UPLOAD_EXTENSIONS) == ALLOWED_EXTENSIONS  # config knows what files can
    assert make_settings(tmp_path, upload_allowed_extensions=".PNG, txt").upload_allowed_extensions
    with pytest.raises(ValidationError, match="exe"):
        make_settings(tmp_path, upload_allowed_extensions="png,exe")


async def test_version_in_health_and_logs_metrics_off_and_upload_extensions(
    sqlite_template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    settings = make_settings(
        tmp_path, api_version="7.1.0", metrics_enabled=False, upload_allowed_extensions="txt"
    )
    with caplog.at_level(logging.INFO, logger="app"):
        async with started_app(settings) as app, asgi_client(app) as client:
            started = [r.getMessage() for r in caplog.records if r.name == "app"]
            assert "app 7.1.0 started (test)" in started
            health = (await client.get("/health")).json()
            assert (health["status"], health["version"]) == ("ok", "7.1.0")
            assert health["time"].endswith("Z") or "+00:00" in health["time"]
            assert_envelope(await client.get("/metrics"), 404, "not_found")

            owner = await Factory(client, app).account()
            png = await client.post(
                "/api/v1/files", files={"file": ("a.png", PNG)}, headers=owner.headers
            )
            assert_envelope(png, 415, "unsupported_media_type")
            text = await client.post(
                "/api/v1/files", files={"file": ("a.txt", b"hello")}, headers=owner.headers
            )
            assert text.status_code == 201, text.text
    messages = [r.getMessage() for r in caplog.records if r.name == "app"]
    assert messages[-1] == "app 7.1.0 stopped"
    assert "app 7.1.0 stopping" in messages


def test_the_api_prefix_is_validated(tmp_path: Path) -> None:
    assert make_settings(tmp_path).api_v1_prefix == "/api/v1"
    assert make_settings(tmp_path, api_v1_prefix="/svc/v1.2").api_path("/x") == "/svc/v1.2/x"
    refused = ("api/v1", "/api/v1/", "/", "", "/api//v1", "/a b", "/api/..", "/%2e", "/api/v2",
               "/api/v2/x", "/api")  # fmt: skip
    for prefix in refused:
        with pytest.raises(ValidationError):
            make_settings(tmp_path, api_v1_prefix=prefix)


async def test_every_v1_route_and_handed_out_url_follow_the_api_prefix(
    sqlite_template: Path, tmp_path: Path
) -> None:
    shutil.copy(sqlite_template, tmp_path / "app.db")
    # A 1 KiB body cap for everything but uploads: an upload over it passing shows the upload
    # routes' own cap found them under the new prefix.
    settings = make_settings(tmp_path, api_v1_prefix="/svc/v1", max_request_body_bytes=1024)
    async with started_app(settings) as app, asgi_client(app) as client:
        token_url = app.openapi()["components"]["securitySchemes"]["OAuth2PasswordBearer"]
        assert token_url["flows"]["password"]["tokenUrl"] == "/svc/v1/auth/token"

        owner = await Factory(client, app).account()  # registers and logs in under /svc/v1
        me = await client.get("/svc/v1/users/me", headers=owner.headers)
        assert me.json()["id"] == owner.id
        assert_envelope(
            await client.get("/api/v1/users/me", headers=owner.headers), 404, "not_found"
        )
        old_login = await client.post("/api/v1/auth/token", data={"username": "x", "password": "y"})
        assert_envelope(old_login, 404, "not_found")

        started = await client.post(
            "/svc/v1/reports/user-activity", json={"days": 7}, headers=owner.headers
        )
        assert started.status_code == 202, started.text
        status_url = started.json()["status_url"]
        assert status_url.startswith("/svc/v1/tasks/")
        assert (await client.get(status_url, headers=owner.headers)).status_code == 200
        old_status = status_url.replace("/svc/v1", "/api/v1")
        assert_envelope(await client.get(old_status, headers=owner.headers), 404, "not_found")

        upload = await client.post(
            "/svc/v1/files", files={"file": ("a.txt", b"x" * 4096)}, headers=owner.headers
        )
        assert upload.status_code == 201, upload.text
        url = download_url(upload.json()["id"], settings=settings)
        assert url.startswith("/svc/v1/files/")
        assert (await client.get(url, headers=owner.headers)).content == b"x" * 4096
        old_url = url.replace("/svc/v1", "/api/v1")
        assert_envelope(await client.get(old_url, headers=owner.headers), 404, "not_found")

        # The pages outside the prefix point into it.
        assert 'data-api="/svc/v1/auth/verify"' in (await client.get("/verify-email")).text
        assert 'content="/svc/v1"' in (await client.get("/chat")).text
        assert (await client.get("/health")).status_code == 200
