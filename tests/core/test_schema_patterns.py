"""The patterns the OpenAPI document states where a validator does the work (pydantic's regex
engine has no look-ahead): each must accept exactly what its validator accepts. The fuzz test
(tests/fuzz) checks the same against the running app, this checks it over many more strings."""

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app.auth.schemas import (
    PASSWORD_SCHEMA_PATTERN,
    RESERVED_USERNAMES,
    USERNAME_SCHEMA_PATTERN,
    Password,
    Username,
)
from app.core.schemas import EMAIL_SCHEMA_PATTERN, Email
from app.items.schemas import PRICE_SCHEMA, PRICE_TEXT_PATTERN, Price


def _accepts(adapter: TypeAdapter[Any], value: object) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


USERNAME = TypeAdapter(Username)
PASSWORD = TypeAdapter(Password)
EMAIL = TypeAdapter(Email)
PRICE = TypeAdapter(Price)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9_-]{3,32}\Z") | st.sampled_from(sorted(RESERVED_USERNAMES)))
def test_username_pattern_is_the_validation(username: str) -> None:
    for spelling in (username, username.upper(), username.title()):
        matched = re.search(USERNAME_SCHEMA_PATTERN, spelling) is not None
        assert matched == _accepts(USERNAME, spelling), spelling


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=8, max_size=40))
def test_password_pattern_is_the_validation(password: str) -> None:
    assert (re.search(PASSWORD_SCHEMA_PATTERN, password) is not None) == _accepts(
        PASSWORD, password
    )


@pytest.mark.parametrize(
    "address",
    ["a@example.com", "a@test.example.com", "a@b.test", "a@B.TEST", "a@localhost", "a@x.onion",
     "a@x.local", "a@x.invalid", "a@1.in-addr.arpa", "a@localhost.example.com"],
)  # fmt: skip
def test_email_pattern_names_the_reserved_domains(address: str) -> None:
    assert (re.search(EMAIL_SCHEMA_PATTERN, address) is not None) == _accepts(EMAIL, address)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(PRICE_TEXT_PATTERN, fullmatch=True))
def test_price_text_pattern_accepted(text: str) -> None:
    assert _accepts(PRICE, text), text


@pytest.mark.parametrize("text", ["", "-1", "1.234", "12345678901", "abc", "1.2.3", "NaN"])
def test_price_text_outside_pattern_refused(text: str) -> None:
    # Other spellings of valid prices ("1e2", "1.500") are read too: the schema states the
    # canonical one, never one the validation refuses.
    assert re.search(PRICE_TEXT_PATTERN, text) is None
    assert not _accepts(PRICE, text)


def test_price_number_schema_bounds() -> None:
    number = PRICE_SCHEMA["anyOf"][0]
    assert _accepts(PRICE, number["maximum"])
    assert not _accepts(PRICE, number["maximum"] + 0.01)
    assert not _accepts(PRICE, -0.01)
    assert not _accepts(PRICE, 0.001)
