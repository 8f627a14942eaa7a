"""Static assets ignore Range: any Range header, however many ranges or however malformed,
gets the whole asset (never Starlette's plain-text 400/416 outside the envelope, never a 500)."""

import httpx
import pytest

ASSETS = ("/static/docs/swagger-ui.css", "/chat/chat.js", "/chat")
RANGES = (
    "bytes=" + ",".join(f"{i}-{i + 1}" for i in range(0, 600_000, 200)),  # 3,000 ranges
    "bytes=" + ",".join(f"{i}-{i + 1}" for i in range(10**7, 10**7 + 300_000, 100)),  # past the end
    "bytes=" + ",".join(["0-1"] * 3000 + ["x-y"]),
    "bytes=5-1",
    "bytes=",
    "bytes=-",
    "items=0-1",
    "bytes=0-9",  # even a good one: these assets are always sent whole
)


@pytest.mark.parametrize("path", ASSETS)
async def test_static_assets_are_sent_whole_whatever_the_range(
    client: httpx.AsyncClient, path: str
) -> None:
    whole = await client.get(path)
    assert whole.status_code == 200
    assert whole.headers["accept-ranges"] == "none"
    for value in RANGES:
        response = await client.get(path, headers={"Range": value, "If-Range": '"x"'})
        assert response.status_code == 200, (path, value[:40])
        assert response.content == whole.content
