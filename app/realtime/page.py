"""`/chat`: a small page to try chat and notifications in a browser (no build step, no CDN)."""

from pathlib import Path

from fastapi import APIRouter

from app.core.errors import NoResource
from app.core.static import WholeFileResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
# Scripts only from this origin (no inline code); fetch, WebSocket and SSE only to it too.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}


@router.get("/chat")
async def chat_page() -> WholeFileResponse:
    return WholeFileResponse(STATIC / "chat.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/chat/{name}")
async def chat_asset(name: str) -> WholeFileResponse:
    media_types = {"chat.js": "text/javascript", "chat.css": "text/css"}
    if name not in media_types:  # a fixed list: no path ever reaches the file system
        raise NoResource(f"/chat/{name}")
    return WholeFileResponse(STATIC / name, media_type=media_types[name], headers=PAGE_HEADERS)
