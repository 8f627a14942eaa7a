from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator

from app.core.schemas import APIModel, CleanStr, InputModel
from app.items.models import Currency

Title = Annotated[CleanStr, StringConstraints(min_length=1, max_length=200)]
Description = Annotated[CleanStr, StringConstraints(max_length=5000)]
Price = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


class ItemCreate(InputModel):
    title: Title
    description: Description | None = None
    price: Price
    currency: Currency = Currency.JPY


class ItemUpdate(InputModel):
    title: Title | None = None
    description: Description | None = None
    price: Price | None = None
    currency: Currency | None = None

    @field_validator("title", "price", "currency", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Leaving a field out keeps it; sending null for a required field is a mistake.
        if value is None:
            raise ValueError("may be left out, but not set to null")
        return value


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


class ItemCursorPage(APIModel):
    items: list[ItemRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")
