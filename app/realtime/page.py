"""`/chat`: a small page to try chat and notifications in a browser (no build step, no CDN)."""

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.core.dependencies import SettingsDep
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


@cache
def _page_template() -> str:
    return (STATIC / "chat.html").read_text(encoding="utf-8")


@router.get("/chat")
async def chat_page(settings: SettingsDep) -> HTMLResponse:
    # The script reads API_V1_PREFIX from a meta tag: the CSP allows no inline script to say it.
    page = _page_template().replace("{{api_prefix}}", html.escape(settings.api_v1_prefix))
    return HTMLResponse(page, headers={**PAGE_HEADERS, "Accept-Ranges": "none"})


@router.get("/chat/{name}")
async def chat_asset(name: str) -> WholeFileResponse:
    media_types = {"chat.js": "text/javascript", "chat.css": "text/css"}
    if name not in media_types:  # a fixed list: no path ever reaches the file system
        raise NoResource(f"/chat/{name}")
    return WholeFileResponse(STATIC / name, media_type=media_types[name], headers=PAGE_HEADERS)
