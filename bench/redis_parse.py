"""What redis-py's reply parsers cost per reply, in process: the hiredis C parser against the
pure-Python ones, on the replies of the service's hot path (bench/RESULTS.md, hiredis record).

    taskset -c 1 uv run python -m bench.redis_parse [--replies 20000] [--repeats 5]

Each reply is fed to an `asyncio.StreamReader` and read back with `await
parser.read_response()`, as a connection does once the bytes have arrived (no socket, no
server): CPU time per reply, best of the interleaved repetitions. A parser class that cannot
load (hiredis missing) is reported as such.
"""

import argparse
import asyncio
import json
import time
from typing import Any

from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser
from redis._parsers.encoders import Encoder
from redis.exceptions import RedisError

# A cached item as the service stores it: about 400 bytes of JSON.
ITEM = json.dumps(
    {
        "id": 4000,
        "title": "Item 4000 title",
        "description": "d" * 160,
        "owner_id": "6f1c3c1e-6a86-4f0e-9a43-1f5e2f0d9b11",
        "is_public": True,
        "created_at": "2026-12-03T18:00:00.123456Z",
        "updated_at": "2026-12-03T18:00:00.123456Z",
        "tags": ["a", "b"],
    }
).encode()

REPLIES = {
    "rate limit EVALSHA (integer)": b":17\r\n",
    "cached item get_versioned EVALSHA ([generation, item])": b"*2\r\n:3\r\n$%d\r\n%s\r\n"
    % (len(ITEM), ITEM),
    "GET of the item": b"$%d\r\n%s\r\n" % (len(ITEM), ITEM),
}
# Any: redis-py's parser and encoder classes are untyped.
PARSERS: dict[str, Any] = {
    "resp3": _AsyncRESP3Parser,  # redis.asyncio's default without hiredis
    "resp2": _AsyncRESP2Parser,
    "hiredis": _AsyncHiredisParser,
}
ENCODER: Any = Encoder
WARMUP = 200


class _Connection:
    """The two attributes a parser's `on_connect` reads."""

    def __init__(self) -> None:
        self._reader = asyncio.StreamReader()
        self.encoder = ENCODER("utf-8", "strict", False)


async def per_reply_us(parser_class: Any, reply: bytes, count: int) -> float:
    connection = _Connection()
    parser = parser_class(65536)
    parser.on_connect(connection)
    feed, read = connection._reader.feed_data, parser.read_response
    for _ in range(WARMUP):
        feed(reply)
        await read()
    start = time.process_time()
    for _ in range(count):
        feed(reply)
        await read()
    return (time.process_time() - start) / count * 1e6


async def measure(count: int, repeats: int) -> dict[str, dict[str, float | str]]:
    results: dict[str, dict[str, float | str]] = {}
    for name, reply in REPLIES.items():
        best: dict[str, float | str] = {}
        for _ in range(repeats):
            for parser_name, parser_class in PARSERS.items():
                try:
                    figure = await per_reply_us(parser_class, reply, count)
                except RedisError as exc:  # hiredis not installed
                    best[parser_name] = str(exc)
                    continue
                previous = best.get(parser_name)
                if not isinstance(previous, float) or figure < previous:
                    best[parser_name] = round(figure, 3)
        results[f"{name}, {len(reply)} bytes"] = best
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(measure(args.replies, args.repeats))
    print(json.dumps({"unit": "cpu_us_per_reply", "replies": results}, indent=2))


if __name__ == "__main__":
    main()
