"""The app factory and its lifespan. Importing this module connects to nothing."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app import models  # noqa: F401 - registers every table on Base.metadata
from app.api import api_v1, api_v2
from app.core.cache import MemoryCache, RedisCache
from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_sessionmaker
from app.core.docs import install_docs
from app.core.errors import install_error_handlers
from app.core.middleware import SecurityHeadersMiddleware
from app.core.redis import create_redis
from app.core.request_context import RequestContextMiddleware
from app.core.security import PasswordHasher
from app.health.router import router as health_router

OUTBOUND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
OUTBOUND_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings)
    app.state.engine = engine
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.hasher = PasswordHasher.from_settings(settings)
    redis = create_redis(settings)
    app.state.redis = redis
    app.state.cache = RedisCache(redis) if redis is not None else MemoryCache()
    async with httpx.AsyncClient(timeout=OUTBOUND_TIMEOUT, limits=OUTBOUND_LIMITS) as client:
        app.state.http = client
        try:
            yield
        finally:
            await app.state.cache.close()
            if redis is not None:
                await redis.aclose()
            await engine.dispose()


def _middleware(settings: Settings) -> list[Middleware]:
    """Outermost first: the request ID wraps everything, so even errors carry it."""
    stack = [
        Middleware(RequestContextMiddleware),
        Middleware(SecurityHeadersMiddleware, hsts=settings.is_production),
    ]
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_credentials=settings.cors_allow_credentials,
                allow_methods=["*"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID"],
            )
        )
    return stack


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="App API",
        version="1.0.0",
        summary="Accounts, users and items: the foundation of a production FastAPI service.",
        debug=settings.debug,
        lifespan=lifespan,
        middleware=_middleware(settings),
        openapi_url="/openapi.json" if settings.show_docs else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_v1)
    app.include_router(api_v2)
    if settings.show_docs:
        install_docs(app)
    return app
