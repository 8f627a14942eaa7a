"""json_shape_problem: the pre-check BodyLimitsMiddleware runs before FastAPI parses a body
(the server-level behaviour is in tests/test_http_limits.py)."""

import json

import pytest

from app.core.middleware import json_shape_problem

DEPTH, ITEMS = 5, 50


def problem(body: bytes) -> str | None:
    return json_shape_problem(body, max_depth=DEPTH, max_items=ITEMS)


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": "x", "price": "9.99"}',
        b"[[[[[1]]]]]",  # exactly the depth
        json.dumps(list(range(50))).encode(),  # exactly the values
        json.dumps(
            {"text": "[[[[[[[[[[ ,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,"}
        ).encode(),
        json.dumps([{"a": 1}, {"b": [1, 2]}, {"c": '}]"[{'}] * 5).encode(),
        b"1",
        b'"just a string"',
        b"{not json",  # FastAPI's 422, not ours
    ],
)
def test_bodies_within_the_limits_pass(body: bytes) -> None:
    assert problem(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"[[[[[[1]]]]]]", "deeper than 5"),
        (b'{"a": {"b": {"c": {"d": {"e": {}}}}}}', "deeper than 5"),
        (b"[" * 1_000_000, "deeper than 5"),  # also unterminated: still refused, cheaply
        (json.dumps(list(range(51))).encode(), "more than 50 values"),
        (json.dumps({f"k{i}": 0 for i in range(51)}).encode(), "more than 50 values"),
        # A flood larger than the first heads: caught there without parsing it all.
        (json.dumps({f"k{i}": 0 for i in range(200_000)}).encode(), "more than 50 values"),
        # Over the depth only after a long harmless head.
        (json.dumps([" " * 600_000, [[[[[[1]]]]]]]).encode(), "deeper than 5"),
    ],
)
def test_bodies_over_a_limit_are_named(body: bytes, expected: str) -> None:
    assert expected in str(problem(body))
