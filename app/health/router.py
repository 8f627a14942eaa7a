import asyncio
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import metrics
from app.core.db import utcnow
from app.core.dependencies import Services, ServicesDep, SettingsDep, services_of
from app.core.errors import NoResource, Unauthorized
from app.core.routing import PlainRoute
from app.jobs import heartbeat
from app.jobs.heartbeat import HeartbeatStatus

router = APIRouter(prefix="/health", tags=["health"])
ops_router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_SECONDS = 2.0


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    version: str = Field(description="API_VERSION of the answering process")
    time: datetime = Field(description="The process's clock, UTC")


class CheckResult(BaseModel):
    status: Literal["ok", "down"]
    required: bool
    latency_ms: float
    error: str | None = None


class JobsHeartbeat(BaseModel):
    """The last heartbeat beat sent and a worker stored: `stale` means no worker or no beat is
    running (jobs queue up unprocessed), `unknown` that none was ever seen."""

    status: HeartbeatStatus
    last_heartbeat: datetime | None = None
    age_seconds: float | None = None


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, CheckResult]
    jobs: JobsHeartbeat


async def liveness(request: Request) -> Response:
    """Liveness: the process answers. No I/O, so it stays cheap under any load."""
    # Probes call this more than anything: a plain endpoint (PlainRoute: nothing for FastAPI
    # to solve or validate), serialized once.
    version = services_of(request).settings.api_version
    body = Liveness(version=version, time=utcnow()).model_dump_json()
    return Response(body, media_type="application/json")


router.add_api_route(
    "", liveness, methods=["GET"], response_model=Liveness, route_class_override=PlainRoute
)


async def _check(probe: Callable[[], Awaitable[object]], *, required: bool) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await probe()
    except Exception as exc:  # any failure means "down"; its type is the message
        return CheckResult(
            status="down",
            required=required,
            latency_ms=_elapsed_ms(started),
            error=type(exc).__name__,
        )
    return CheckResult(status="ok", required=required, latency_ms=_elapsed_ms(started))


def _database_probe(engine: AsyncEngine) -> Callable[[], Awaitable[object]]:
    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return probe


async def _jobs_heartbeat(services: Services) -> JobsHeartbeat:
    stale_after = services.settings.heartbeat_stale_seconds
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), services.sessionmaker() as session:
            state = await heartbeat.read(session, stale_after=stale_after)
    except Exception:  # the database check reports why; here it only means "can't tell"
        return JobsHeartbeat(status="unknown")
    return JobsHeartbeat(
        status=state.status, last_heartbeat=state.last_heartbeat, age_seconds=state.age_seconds
    )


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@dataclass(slots=True)
class _Memo:
    """One process's last readiness answer: probes and orchestrators may call as often as
    they like, the dependencies see at most one round of checks per READINESS_CACHE_SECONDS
    (and never two at once). That is what keeps /health/ready exempt from rate limits: a
    limit would turn a probe flood into failed probes and needless restarts."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expires: float = 0.0
    answer: tuple[Readiness, int] | None = None


_memos: "weakref.WeakKeyDictionary[Services, _Memo]" = weakref.WeakKeyDictionary()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A required part is down"}},
)
async def readiness(response: Response, services: ServicesDep) -> Readiness:
    """Readiness: each dependency's state and latency; 503 when a required one is down.

    Redis and file storage are optional: without them, reads and logins that need no limiter
    keep working, so their loss makes the service `degraded`, not unavailable. So does a stale
    jobs heartbeat: the API still serves, only background work waits. Answers are reused for
    READINESS_CACHE_SECONDS.
    """
    memo = _memos.setdefault(services, _Memo())
    async with memo.lock:  # callers arriving during a round wait for its answer
        if memo.answer is None or time.monotonic() >= memo.expires:
            memo.answer = await _assess(services)
            memo.expires = time.monotonic() + services.settings.readiness_cache_seconds
        readiness, status_code = memo.answer
    response.status_code = status_code
    return readiness


async def _assess(services: Services) -> tuple[Readiness, int]:
    probes = [
        ("database", _database_probe(services.engine), True),
        ("storage", services.storage.check, False),
    ]
    if services.redis is not None:
        probes.append(("redis", services.redis.ping, False))
    jobs_heartbeat, results = await asyncio.gather(
        _jobs_heartbeat(services),
        asyncio.gather(*(_check(probe, required=req) for _, probe, req in probes)),
    )
    checks = {name: result for (name, _, _), result in zip(probes, results, strict=True)}
    if any(c.status == "down" and c.required for c in checks.values()):
        return Readiness(status="unavailable", checks=checks, jobs=jobs_heartbeat), 503
    degraded = any(c.status == "down" for c in checks.values()) or jobs_heartbeat.status == "stale"
    status: Literal["ok", "degraded"] = "degraded" if degraded else "ok"
    return Readiness(status=status, checks=checks, jobs=jobs_heartbeat), 200


@ops_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(
    request: Request, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Prometheus text format. In production only with `Authorization: Bearer METRICS_TOKEN`
    (and not at all without a token set): it tells an attacker a lot. With METRICS_ENABLED off
    the route answers as if it did not exist."""
    if not settings.metrics_enabled:
        raise NoResource(request.url.path)
    if settings.is_production:
        if settings.metrics_token is None:
            raise NoResource(request.url.path)
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        if not secrets.compare_digest((authorization or "").encode(), expected.encode()):
            raise Unauthorized("A metrics token is required")
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
