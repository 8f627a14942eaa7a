from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, WithJsonSchema

from app.auth.schemas import UserPrivate
from app.core.schemas import APIModel, CleanStr, CursorPage, InputModel, Page
from app.items.models import Currency

Title = Annotated[CleanStr, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[CleanStr, StringConstraints(max_length=5000)]
# What the validation takes, for the OpenAPI document (pydantic states neither the digits nor
# the form of the string): a number in cents up to 10 integer digits, or that number written
# out. The validation also reads other spellings of the same numbers ("15e-1", "1.500").
PRICE_TEXT_PATTERN = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"
# Filters on prices allow two more integer digits (max_digits=14).
PRICE_BOUND_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,2})?$"
MAX_PRICE = 9_999_999_999.99
PRICE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": MAX_PRICE, "multipleOf": 0.01},
        {"type": "string", "pattern": PRICE_TEXT_PATTERN},
    ]
}
Price = Annotated[
    Decimal, Field(ge=0, max_digits=12, decimal_places=2), WithJsonSchema(PRICE_SCHEMA)
]


class ItemCreate(InputModel):
    title: Title
    description: Description | None = None
    price: Price
    currency: Currency = Currency.JPY

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "title": "Brass lamp",
                    "description": "1920s desk lamp, rewired",
                    "price": "12800",
                    "currency": "JPY",
                }
            ]
        }
    )


class ItemUpdate(InputModel):
    """Fields left out keep their value. Title, price and currency may be left out but not
    set to null (the schema says so too: they are not nullable, just optional)."""

    title: Title = Field(default=None)  # type: ignore[assignment]
    description: Description | None = None
    price: Price = Field(default=None)  # type: ignore[assignment]
    currency: Currency = Field(default=None)  # type: ignore[assignment]


class ItemRead(APIModel):
    id: int
    title: str
    description: str | None
    price: Decimal = Field(description="Decimal as a string, exact to the cent")
    currency: Currency
    owner_id: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = Field(description="Set on soft-deleted items (admins only)")


class ItemCursorPage(CursorPage[ItemRead]):
    pass


class UserItemsPage(Page[ItemRead]):
    """A page of a user's live items, with the user (GET /users/{id}/items)."""

    user: UserPrivate
