"""Order helpers shared by the orders tests: the collection path, a valid order body (three
currencies, a Tokyo address) and placing one as an account."""

from typing import Any

import httpx

from tests.support.factories import Account

ORDERS = "/api/v1/orders/"
ADDRESS = {
    "postal_code": "100-0001",
    "prefecture": "東京都",
    "city": "千代田区",
    "street": "千代田1-1",
    "building": "Imperial Bldg 3F",
}


def order_body(**fields: Any) -> dict[str, Any]:
    return {
        "lines": [
            {"name": "Tea", "quantity": 2, "unit_price": "10.50", "currency": "USD"},
            {"name": "Cup", "quantity": 1, "unit_price": "3.00", "currency": "EUR"},
            {"name": "Sencha", "quantity": 3, "unit_price": "1200", "currency": "JPY"},
        ],
        "shipping_address": ADDRESS,
        "notes": "Leave at the door",
        **fields,
    }


async def place(client: httpx.AsyncClient, account: Account, **fields: Any) -> dict[str, Any]:
    response = await client.post(ORDERS, json=order_body(**fields), headers=account.headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data
