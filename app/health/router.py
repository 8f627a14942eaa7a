import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter(prefix="/health", tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    status: Literal["ok", "down"]
    required: bool
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, CheckResult]


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


@router.get("", response_model=Liveness)
async def liveness() -> Liveness:
    """Liveness: the process answers. No I/O, so it stays cheap under any load."""
    return Liveness()


async def _check_database(engine: AsyncEngine) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return CheckResult(
            status="down",
            required=True,
            latency_ms=_elapsed_ms(started),
            error=type(exc).__name__,
        )
    return CheckResult(status="ok", required=True, latency_ms=_elapsed_ms(started))


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A required part is down"}},
)
async def readiness(
    response: Response, engine: Annotated[AsyncEngine, Depends(get_engine)]
) -> Readiness:
    """Readiness: each dependency's state and latency; 503 when a required one is down."""
    checks = {"database": await _check_database(engine)}
    if any(c.status == "down" and c.required for c in checks.values()):
        status: Literal["ok", "degraded", "unavailable"] = "unavailable"
        response.status_code = 503
    elif any(c.status == "down" for c in checks.values()):
        status = "degraded"
    else:
        status = "ok"
    return Readiness(status=status, checks=checks)
