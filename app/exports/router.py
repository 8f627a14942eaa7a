from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from app.auth.dependencies import AdminPrincipal, CurrentPrincipal
from app.auth.principal import Principal
from app.core.dependencies import Services, ServicesDep
from app.core.streams import LimitedStreamingResponse
from app.exports import service
from app.exports.service import AnySelect, ExportFormat
from app.files.safety import content_disposition

router = APIRouter(prefix="/exports", tags=["exports"])

FormatParam = Annotated[
    ExportFormat | None, Query(alias="format", description="Default: by Accept, else csv")
]
AcceptHeader = Annotated[str | None, Header(alias="accept", include_in_schema=False)]
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {}, "application/x-ndjson": {}, "application/json": {}},
        "description": "Rows streamed as they are read",
    },
    429: {"description": "Over MAX_CONCURRENT_STREAMS_PER_USER downloads at once"},
}


def _export(
    services: Services, statement: AnySelect, name: str, chosen: ExportFormat, who: Principal
) -> StreamingResponse:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = service.stream_export(
        sessionmaker=services.sessionmaker, statement=statement,
        export_format=chosen, batch_size=services.settings.export_batch_size,
        gate=services.streams.database,
    )  # fmt: skip
    return LimitedStreamingResponse(
        chunks,
        limiter=services.streams,
        user_id=who.id,
        write_timeout=services.settings.stream_write_timeout_seconds,
        media_type=service.MEDIA_TYPES[chosen],
        headers={"Content-Disposition": content_disposition(f"{name}-{stamp}.{chosen}")},
    )


@router.get("/items", response_class=StreamingResponse, responses=_STREAM)
async def export_items(
    owner: CurrentPrincipal,
    services: ServicesDep,
    export_format: FormatParam = None,
    accept: AcceptHeader = None,
) -> StreamingResponse:
    """Your items (not deleted) as CSV or NDJSON, streamed."""
    chosen = service.choose_format(requested=export_format, accept=accept)
    return _export(services, service.items_query(owner_id=owner.id), "items", chosen, owner)


@router.get("/users", response_class=StreamingResponse, responses=_STREAM)
async def export_users(
    admin: AdminPrincipal,
    services: ServicesDep,
    export_format: FormatParam = None,
    accept: AcceptHeader = None,
) -> StreamingResponse:
    """Every user as CSV or NDJSON, streamed (admin)."""
    chosen = service.choose_format(requested=export_format, accept=accept)
    return _export(services, service.users_query(), "users", chosen, admin)
