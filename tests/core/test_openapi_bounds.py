"""Integer bounds in the OpenAPI document mean what the validation means.

FastAPI writes a body field's bounds as floats: past 2**53 a float can't hold the integer
(2**63 - 1 became 2**63), and the document then allowed an id the validation refused (the
fuzz test found one in a campaign's user_ids). Body ids are bounded by MAX_JSON_ID instead."""

from pathlib import Path
from typing import Any

from app.core.db import MAX_JSON_ID
from app.main import create_app
from tests.support.settings import make_settings


def _bounds(node: Any, path: str = "") -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    if isinstance(node, dict):
        found += [(f"{path}/{key}", node[key]) for key in ("maximum", "minimum") if key in node]
        for key, value in node.items():
            found += _bounds(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _bounds(value, f"{path}/{index}")
    return found


def test_every_float_bound_is_an_exact_integer_or_small(tmp_path: Path) -> None:
    document = create_app(make_settings(tmp_path)).openapi()
    bounds = _bounds(document)
    assert bounds
    inexact = [(where, value) for where, value in bounds
               if isinstance(value, float) and abs(value) > 2**53]  # fmt: skip
    assert inexact == []
    # The body ids carry the JSON bound, exactly.
    schemas = document["components"]["schemas"]
    assert schemas["MemberAdd"]["properties"]["user_id"]["maximum"] == MAX_JSON_ID
