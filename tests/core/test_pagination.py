"""The keyset step every cursor listing shares (items v2, chat history, notifications)."""

import pytest

from app.core.errors import InvalidCursor
from app.core.pagination import cursor_page, decode_cursor, encode_cursor
from app.core.schemas import CursorPage


def test_a_cursor_round_trips_and_is_opaque() -> None:
    cursor = encode_cursor(2**63 - 1)
    assert "=" not in cursor  # safe in a query string as it is
    assert decode_cursor(cursor) == 2**63 - 1


@pytest.mark.parametrize(
    "cursor",
    ["garbage", encode_cursor(0), "eyJpZCI6IHRydWV9", "eyJpZCI6ICJ4In0", "e30", "W10"],
)
def test_a_cursor_we_did_not_issue_is_a_422(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 422
    assert caught.value.details[0].field == "query.cursor"


def test_the_extra_row_decides_whether_there_is_a_next_page() -> None:
    rows = [9, 8, 7, 6]  # what after_cursor selects for limit=3: one more than a page
    page, next_cursor = cursor_page(rows, limit=3, key=lambda row: row)
    assert list(page) == [9, 8, 7]
    assert next_cursor is not None
    assert decode_cursor(next_cursor) == 7  # the next page starts below the last one shown
    assert cursor_page(rows[:3], limit=3, key=lambda row: row) == ([9, 8, 7], None)


def test_a_named_cursor_page_keeps_the_generic_shape() -> None:
    class NumberPage(CursorPage[int]):
        pass

    assert NumberPage(items=[3, 2], next_cursor=None).model_dump() == {
        "items": [3, 2],
        "next_cursor": None,
    }
    assert NumberPage.model_json_schema()["title"] == "NumberPage"
