"""The /chat page in a real browser: headless Chromium (Debian's package, driven by
Playwright's Python client; `playwright install` is never needed), two browser contexts
(two people) exchanging messages, with history and a notification."""

import shutil
from pathlib import Path

import pytest

from tests.support.factories import Account
from tests.support.live import LiveFactory, LiveServer
from tests.support.servers import require_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytest.importorskip("playwright.async_api")

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402


async def open_chat(
    browser: Browser, server: LiveServer, account: Account, problems: list[str]
) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    # Script errors and CSP refusals show up here: the page must run clean.
    page.on("pageerror", lambda error: problems.append(f"{account.username}: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"{account.username}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    await page.goto(server.url + "/chat")
    await page.fill("#username", account.username)
    await page.fill("#password", account.password)
    await page.click("#login")
    await expect(page.locator("#status")).to_have_text(f"signed in as {account.username}")
    await page.fill("#room", "browsers")
    await page.click("#join")
    await expect(page.locator("#status")).to_have_text("in #browsers")
    return page


async def say(page: Page, text: str) -> None:
    await page.fill("#message-input", text)
    await page.click("#send")


async def test_two_people_chat_in_the_browser(live: LiveFactory) -> None:
    if not Path(CHROMIUM).exists():
        require_server("chromium is not installed (apt-get install chromium)")
    async with live() as server, async_playwright() as playwright:
        alice, bob = await server.factory.account(), await server.factory.account()
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox"],  # CI runs as root, where Chromium's sandbox can't start
        )
        problems: list[str] = []
        try:
            a = await open_chat(browser, server, alice, problems)
            b = await open_chat(browser, server, bob, problems)
            # bob joined after alice: alice's page shows it.
            await expect(a.locator("#messages li.event").last).to_have_text(
                f"{bob.username} joined"
            )
            await say(a, "hello from alice")
            await expect(b.locator("#messages li.message")).to_have_text(
                [f"{alice.username}hello from alice"]
            )
            await say(b, "hi alice")
            expected = [f"{alice.username}hello from alice", f"{bob.username}hi alice"]
            await expect(a.locator("#messages li.message")).to_have_text(expected)
            await expect(b.locator("#messages li.message")).to_have_text(expected)

            # A notification for alice (a finished job) appears on her page only.
            async with server.app.state.services.sessionmaker() as session:
                await server.realtime.notifier.send_to_user(
                    session=session,
                    user_id=alice.id,
                    kind="job.finished",
                    title="Export ready",
                    body="3 rows",
                )
            await expect(a.locator("#notifications li")).to_have_text(["Export ready 3 rows"])
            await expect(b.locator("#notifications li")).to_have_count(0)

            # A third window joins later and reads the history.
            c = await open_chat(browser, server, bob, problems)
            await expect(c.locator("#messages li.message")).to_have_text(expected)
        finally:
            await browser.close()
        assert problems == []
