from pathlib import Path

import httpx

from app.main import create_app
from tests.support.settings import TEST_SECRET, make_settings


async def test_docs_are_served_without_a_cdn(client: httpx.AsyncClient) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = (await client.get(page)).text
        assert f"/static/docs/{asset}" in html
        assert "cdn." not in html
        assert "fonts.googleapis" not in html
        js = await client.get(f"/static/docs/{asset}")
        assert js.status_code == 200
        assert len(js.content) > 100_000
    assert (await client.get("/static/docs/swagger-ui.css")).status_code == 200


async def test_openapi_declares_the_password_flow(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    flow = schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]
    assert flow["tokenUrl"] == "/api/v1/auth/token"
    assert set(flow["scopes"]) == {"profile", "items:write", "admin"}
    # Scopes show on the operations that need them.
    users_list = schema["paths"]["/api/v1/users/"]["get"]
    assert users_list["security"] == [{"OAuth2PasswordBearer": ["admin"]}]


async def test_swagger_authorize_form_logs_in(client: httpx.AsyncClient) -> None:
    # Exactly what Swagger UI's Authorize dialog posts for the password flow.
    await client.post(
        "/api/v1/auth/register",
        json={"username": "swagger", "email": "s@example.com", "password": "Swagger-ui-1",
              "password_confirm": "Swagger-ui-1"},
    )  # fmt: skip
    response = await client.post(
        "/api/v1/auth/token",
        content="grant_type=password&username=swagger&password=Swagger-ui-1&scope=profile",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "profile"


async def test_docs_are_off_in_production(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, environment="production", secret_key=TEST_SECRET)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 404
