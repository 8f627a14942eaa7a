from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from app.core.schemas import APIModel, CleanStr, CursorPage, InputModel
from app.items.models import Currency
from app.items.schemas import Price
from app.orders.models import OrderStatus

# The schema's caps; ORDER_MAX_LINES and ORDER_MAX_QUANTITY may lower them (app.core.config).
MAX_LINES = 100
MAX_QUANTITY = 1_000_000
POSTAL_CODE_PATTERN = r"^[0-9]{3}-[0-9]{4}$"


class Prefecture(StrEnum):
    """The 47 prefectures of Japan, as written on an address."""

    HOKKAIDO = "北海道"
    AOMORI = "青森県"
    IWATE = "岩手県"
    MIYAGI = "宮城県"
    AKITA = "秋田県"
    YAMAGATA = "山形県"
    FUKUSHIMA = "福島県"
    IBARAKI = "茨城県"
    TOCHIGI = "栃木県"
    GUNMA = "群馬県"
    SAITAMA = "埼玉県"
    CHIBA = "千葉県"
    TOKYO = "東京都"
    KANAGAWA = "神奈川県"
    NIIGATA = "新潟県"
    TOYAMA = "富山県"
    ISHIKAWA = "石川県"
    FUKUI = "福井県"
    YAMANASHI = "山梨県"
    NAGANO = "長野県"
    GIFU = "岐阜県"
    SHIZUOKA = "静岡県"
    AICHI = "愛知県"
    MIE = "三重県"
    SHIGA = "滋賀県"
    KYOTO = "京都府"
    OSAKA = "大阪府"
    HYOGO = "兵庫県"
    NARA = "奈良県"
    WAKAYAMA = "和歌山県"
    TOTTORI = "鳥取県"
    SHIMANE = "島根県"
    OKAYAMA = "岡山県"
    HIROSHIMA = "広島県"
    YAMAGUCHI = "山口県"
    TOKUSHIMA = "徳島県"
    KAGAWA = "香川県"
    EHIME = "愛媛県"
    KOCHI = "高知県"
    FUKUOKA = "福岡県"
    SAGA = "佐賀県"
    NAGASAKI = "長崎県"
    KUMAMOTO = "熊本県"
    OITA = "大分県"
    MIYAZAKI = "宮崎県"
    KAGOSHIMA = "鹿児島県"
    OKINAWA = "沖縄県"


def _text(max_length: int) -> object:
    return StringConstraints(min_length=1, max_length=max_length)


class ShippingAddress(InputModel):
    postal_code: Annotated[str, StringConstraints(pattern=POSTAL_CODE_PATTERN)] = Field(
        description="Japanese postal code, NNN-NNNN", examples=["100-0001"]
    )
    prefecture: Prefecture
    city: Annotated[CleanStr, _text(100)]
    street: Annotated[CleanStr, _text(200)]
    building: Annotated[CleanStr, _text(200)] | None = None


class OrderLineCreate(InputModel):
    name: Annotated[CleanStr, _text(200)]
    quantity: int = Field(gt=0, le=MAX_QUANTITY)
    unit_price: Price
    currency: Currency


class OrderCreate(InputModel):
    lines: list[OrderLineCreate] = Field(min_length=1, max_length=MAX_LINES)
    shipping_address: ShippingAddress
    notes: Annotated[CleanStr, StringConstraints(max_length=1000)] | None = None


class OrderStatusChange(InputModel):
    status: OrderStatus


class OrderLineRead(APIModel):
    id: int
    name: str
    quantity: int
    unit_price: Decimal = Field(description="Decimal as a string, exact to the cent")
    currency: Currency


class ShippingAddressRead(APIModel):
    postal_code: str
    prefecture: str
    city: str
    street: str
    building: str | None


class CurrencyTotal(APIModel):
    currency: Currency
    amount: Decimal = Field(description="The lines in this currency, exact to the cent")


class OrderRead(APIModel):
    id: int
    owner_id: int
    status: OrderStatus
    version: int = Field(description="Changes with every update; the ETag is built from it")
    lines: list[OrderLineRead]
    shipping_address: ShippingAddressRead
    notes: str | None
    totals: list[CurrencyTotal] = Field(description="Per currency, in the order lines appear")
    total_jpy: Decimal = Field(description="Every line converted to yen when the order was placed")
    rates_jpy: dict[str, str] = Field(description="Yen per unit of each currency used")
    created_at: datetime
    updated_at: datetime


class OrderCursorPage(CursorPage[OrderRead]):
    pass
