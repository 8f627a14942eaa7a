"""The app factory and its lifespan. Importing this module connects to nothing.

`app.main:app` is the ASGI app for the standard servers (`uvicorn app.main:app`, `fastapi run`,
gunicorn's UvicornWorker): built on first access (PEP 562), so importing stays free of effects.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cache
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app import models  # noqa: F401 - registers every table on Base.metadata
from app.auth.dependencies import TOKEN_PATH
from app.core import gc_tuning
from app.core.background import TaskManager
from app.core.cache import build_cache
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_sessionmaker
from app.core.dependencies import Services
from app.core.docs import install_docs
from app.core.errors import install_error_handlers
from app.core.http import create_http_client
from app.core.logging import configure_logging
from app.core.middleware import BodyLimitsMiddleware, EdgeMiddleware, SignedSessionMiddleware
from app.core.proxy import ForwardedHeadersMiddleware
from app.core.pubsub import create_hub
from app.core.ratelimit import Policies, create_limiter
from app.core.redis import create_cache_redis, create_pipelined, create_redis
from app.core.routing import install_route_index
from app.core.security import AccessTokenVerifier, PasswordHasher
from app.core.sentry import init_sentry
from app.core.shutdown import exit_cleanly_on_sigterm, install_drain_on_signal
from app.core.storage import create_storage
from app.core.streams import StreamLimiter
from app.files.router import MULTIPART_OVERHEAD_BYTES, upload_paths
from app.jobs import monitor as job_monitor
from app.jobs.celery_app import make_celery
from app.jobs.service import Jobs
from app.realtime.runtime import start_realtime
from app.routes import include_routes

logger = logging.getLogger("app")


def _lifespan(
    settings: Settings, policies: Policies, *, handle_signals: bool, tune_gc: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The process's services, opened at start and closed at shutdown. Routes reach them
    through the typed dependencies of app/core/dependencies.py (and app/jobs, app/realtime),
    which read the four attributes set here: `services`, `jobs`, `realtime` and `notifier`
    (realtime's notification service, handed down to the domains below it as a
    app.core.notifier.Notifier: orders notifies owners through it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.is_production and settings.mail_backend == "file":
            logger.warning(
                "No mail backend (SMTP_HOST or EMAIL_BACKEND=http): mail (password resets"
                " included) goes to %s, not to people",
                settings.outbox_dir,
            )
        engine = create_engine(settings)
        redis = create_redis(settings)
        # One pipelined connection per process for the per-request commands (rate limit,
        # cache generations), shared like the redis-py client and closed with it.
        pipelined = create_pipelined(settings.redis_url)
        services = Services(
            settings=settings,
            policies=policies,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            hasher=PasswordHasher.from_settings(settings),
            token_verifier=AccessTokenVerifier(settings),
            redis=redis,
            cache=build_cache(
                shared=redis,
                cache_redis=create_cache_redis(settings),
                memory_max_bytes=settings.cache_memory_max_bytes,
                near_ttl=settings.auth_snapshot_local_seconds,
                near_max_entries=settings.auth_snapshot_local_max_entries,
                pipelined_shared=pipelined,
                pipelined_cache=create_pipelined(settings.cache_redis_url),
            ),
            limiter=create_limiter(settings, pipelined),
            hub=create_hub(settings.redis_url),
            storage=create_storage(settings),
            background=TaskManager(),
            streams=StreamLimiter.start(settings, redis),
            http=create_http_client(),
        )
        app.state.services = services
        celery = make_celery(settings)
        app.state.jobs = Jobs(
            celery,
            max_active_per_owner=settings.user_max_active_jobs,
            retry_after_seconds=settings.user_jobs_retry_after_seconds,
        )
        realtime = await start_realtime(
            settings=settings,
            hub=services.hub,
            redis=redis,
            cache=services.cache,
            sessionmaker=services.sessionmaker,
            limiter=services.limiter,
            policies=policies,
        )
        app.state.realtime = realtime
        app.state.notifier = realtime.notifier
        uninstall_drain = (
            install_drain_on_signal(realtime.drain) if handle_signals else lambda: None
        )
        background = services.background
        background.spawn(
            "job-metrics",
            lambda: job_monitor.run(settings=settings, sessionmaker=services.sessionmaker),
        )
        logger.info(
            "%s %s started (%s)", settings.app_name, settings.api_version, settings.environment
        )
        if tune_gc:  # last: everything the process keeps is built by now
            gc_tuning.freeze_after_startup(settings)
        try:
            yield
        finally:
            logger.info("%s %s stopping", settings.app_name, settings.api_version)
            uninstall_drain()
            await realtime.close()
            await services.streams.close()
            await background.shutdown(grace=5.0)  # first: its tasks use what closes below
            await services.storage.close()
            await services.http.aclose()
            celery.close()  # its broker connections and pools
            await services.hub.close()
            await services.limiter.close()
            await services.cache.close()
            if redis is not None:
                await redis.aclose()
            if pipelined is not None:
                await pipelined.close()
            await engine.dispose()
            logger.info("%s %s stopped", settings.app_name, settings.api_version)

    return lifespan


def _middleware(settings: Settings, policies: Policies) -> list[Middleware]:
    """Outermost first. Forwarded headers first, so everything after sees the real client,
    scheme and host; then the edge (app.core.middleware.EdgeMiddleware: request context and
    access log, metrics, the global rate limit, security headers, gzip, trusted hosts, in that
    order, so even errors carry the ID and reach the access log, metrics see rate-limited
    requests, gzip only sees what is allowed); CORS and the session cookie; the body limits."""
    stack = []
    if settings.trusted_proxies:
        stack.append(
            Middleware(ForwardedHeadersMiddleware, trusted_proxies=settings.trusted_proxies)
        )
    stack.append(
        Middleware(
            EdgeMiddleware,
            allowed_hosts=settings.allowed_hosts,
            policy=policies.default if settings.rate_limit_enabled else None,
            ipv6_prefix=settings.rate_limit_ipv6_prefix,
            hsts=settings.is_production,
            access_log=settings.access_log,
            gzip_minimum_size=1000,  # never text/event-stream
        )
    )
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=settings.cors_allow_credentials,
                allow_methods=["*"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
            )
        )
    uploads = upload_paths(settings.api_v1_prefix)
    stack += [
        Middleware(
            SignedSessionMiddleware,
            secret_key=settings.signing_key(),
            session_cookie=settings.session_cookie_name,
            max_age=settings.session_cookie_max_age_seconds,
            https_only=settings.is_production,
            same_site="lax",
        ),
        Middleware(
            BodyLimitsMiddleware,
            max_bytes=settings.max_request_body_bytes,
            path_limits=[
                (path, settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES) for path in uploads
            ],
            json_max_depth=settings.json_max_depth,
            json_max_items=settings.json_max_items,
            json_skip_paths=uploads,
        ),
    ]
    return stack


def _token_url_under_prefix(app: FastAPI, settings: Settings) -> None:
    """The bearer scheme is one object per process, its token URL relative to API_V1_PREFIX
    (TOKEN_PATH): each app's document names the full URL, so Swagger's login follows the
    setting."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # cached on the app after the first call, this rewrite with it
        for scheme in schema.get("components", {}).get("securitySchemes", {}).values():
            flow = scheme.get("flows", {}).get("password", {})
            if flow.get("tokenUrl") == TOKEN_PATH:
                flow["tokenUrl"] = settings.api_path(TOKEN_PATH)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _telemetry(settings: Settings) -> TelemetryConfig:
    on = settings.opentelemetry_enabled
    return {"tracing": on, "metrics": on, "logs": on}


def create_app(
    settings: Settings | None = None, *, handle_signals: bool = False, tune_gc: bool = False
) -> FastAPI:
    """`handle_signals`: close WebSockets (1001) and SSE streams on SIGINT/SIGTERM before the
    server does (see core/shutdown.py); `tune_gc`: the GC_* settings (app/core/gc_tuning.py).
    Both for a server process, not for an app under test: a test process builds many apps,
    and a frozen heap would keep every one of them."""
    settings = settings or get_settings()
    policies = Policies.from_settings(settings)
    init_sentry(settings)
    app = FastAPI(
        title=settings.api_title,
        version=settings.api_version,
        description=settings.api_description,
        debug=settings.debug,
        lifespan=_lifespan(settings, policies, handle_signals=handle_signals, tune_gc=tune_gc),
        middleware=_middleware(settings, policies),
        openapi_url="/openapi.json" if settings.show_docs else None,
        docs_url=None,
        redoc_url=None,
        telemetry=_telemetry(settings),
    )
    install_error_handlers(app, max_validation_errors=settings.validation_max_errors)
    include_routes(app, settings)
    _token_url_under_prefix(app, settings)
    if settings.show_docs:
        install_docs(app)
    install_route_index(app)
    return app


def serve_app() -> FastAPI:
    """What uvicorn runs in each worker process: logging set up, settings from the env."""
    settings = get_settings()
    configure_logging(settings)
    exit_cleanly_on_sigterm()
    return create_app(settings, handle_signals=True, tune_gc=True)


_served_app = cache(serve_app)  # one app per process, however often a server looks it up


def __getattr__(name: str) -> FastAPI:
    """`app`: what `serve_app()` returns, made when a server first asks for it."""
    if name == "app":
        return _served_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
