"""Static assets (the docs' scripts, the chat page) served whole, never in byte ranges.

Starlette's FileResponse answers `Range` itself, and a malformed or unsatisfiable one gets a
plain-text 400/416 outside the error envelope. These assets are a few kilobytes to a
megabyte and nobody resumes their download, so they ignore `Range` and `If-Range` (RFC 9110
lets a server do so) and say `Accept-Ranges: none`. User files keep real range support in
app/files, where a malformed range is a 416 in the envelope.
"""

import os

from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.staticfiles import NotModifiedResponse
from starlette.types import Receive, Scope, Send

_RANGE_HEADERS = (b"range", b"if-range")


class WholeFileResponse(FileResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.headers["accept-ranges"] = "none"
        headers = [(k, v) for k, v in scope["headers"] if k not in _RANGE_HEADERS]
        await super().__call__({**scope, "headers": headers}, receive, send)


class WholeStaticFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = WholeFileResponse(full_path, status_code=status_code, stat_result=stat_result)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response
