"""The two pages email links open (AUTH-9). They POST the token to the API: following a link
must not spend it, because mail scanners open links before people do."""

import base64
import hashlib

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from app.core.dependencies import SettingsDep

router = APIRouter(include_in_schema=False)

_SCRIPT = """
const token = new URLSearchParams(location.search).get("token") || "";
const form = document.querySelector("form");
const out = document.querySelector("#out");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {token};
  for (const input of form.querySelectorAll("input")) body[input.name] = input.value;
  if (body.confirm !== undefined) {
    if (body.confirm !== body.new_password) { out.textContent = "The passwords differ."; return; }
    delete body.confirm;
  }
  const response = await fetch(form.dataset.api, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (response.ok) { out.textContent = form.dataset.done; form.hidden = true; return; }
  const error = await response.json().catch(() => null);
  out.textContent = (error && error.error && error.error.message) || "Something went wrong.";
});
"""
_CSP = (
    "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()}'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _page(title: str, api: str, done: str, fields: str, button: str) -> HTMLResponse:
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 3em auto;">
<h1>{title}</h1>
<form data-api="{api}" data-done="{done}">{fields}<button type="submit">{button}</button></form>
<p id="out" role="status"></p>
<script>{_SCRIPT}</script>
</body></html>"""
    # no-referrer and no-store: the token in the URL goes nowhere else and isn't cached.
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
    return HTMLResponse(html, headers=headers)


@router.get("/verify-email")
async def verify_email_page(settings: SettingsDep) -> HTMLResponse:
    return _page(
        "Confirm your email address", settings.api_path("/auth/verify"),
        "Your email address is verified.", "", "Confirm",
    )  # fmt: skip


@router.get("/reset-password")
async def reset_password_page(settings: SettingsDep) -> HTMLResponse:
    fields = (
        '<p><label>New password <input name="new_password" type="password" required '
        'minlength="8" maxlength="128" autocomplete="new-password"></label></p>'
        '<p><label>Repeat it <input name="confirm" type="password" required '
        'autocomplete="new-password"></label></p>'
    )
    return _page(
        "Choose a new password", settings.api_path("/auth/password-reset"),
        "Your password is changed. Sign in again with it.", fields, "Set password",
    )  # fmt: skip
