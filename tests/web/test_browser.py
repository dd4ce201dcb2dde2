"""The console page in headless Chromium: type, watch, refuse, reload, screenshot."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from iochannel.chardev import Frontend, HubChardev
from iochannel.crypto import X509Credentials
from iochannel.web import Role, WebConsole
from tests.conftest import require_tool
from tests.test_tls import make_creds

from .shell import Shell

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 15000

# Opens a second WebSocket from a read-only page and sends input the way the
# page would if it did not hold back: the server must refuse it.
SEND_AS_PAGE = """
async ([token, text]) => {
  const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`, ["binary"]);
  ws.binaryType = "arraybuffer";
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  const bytes = new TextEncoder().encode(text);
  const message = new Uint8Array(3 + bytes.length);
  new DataView(message.buffer).setUint16(1, bytes.length);
  message.set(bytes, 3);
  ws.send(message);
  ws.send(new Uint8Array([1, 0, 5, 0, 7]));
  window.sneaking = ws;
}
"""


def playwright_api() -> Any:
    try:
        from playwright import async_api
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install the test extra)")
        pytest.skip("playwright is not installed")
    return async_api


async def screen_text(page: Any) -> str:
    return str(await page.locator(".xterm-rows").inner_text())


async def wait_text(page: Any, text: str) -> None:
    await page.wait_for_function(
        "(text) => document.querySelector('.xterm-rows').innerText.includes(text)",
        arg=text,
        timeout=TIMEOUT_MS,
    )


async def open_page(browser: Any, url: str, errors: list[str]) -> Any:
    """A page of *browser* (or a browser context) at *url*, its WebSocket open.

    The page's script errors and console errors (a Content-Security-Policy
    violation is one) are added to *errors*.
    """
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text} at {msg.location['url']}")
            if msg.type == "error"
            else None
        ),
    )
    await page.set_viewport_size({"width": 900, "height": 500})
    await page.goto(url)
    await page.wait_for_selector('body[data-status="connected"]', timeout=TIMEOUT_MS)
    return page


async def in_browser(use: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``use(browser)`` with headless Chromium."""
    chromium = require_tool("chromium")
    async_api = playwright_api()
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            await use(browser)
        finally:
            await browser.close()


def test_type_watch_refuse_reload(tmp_path: Path) -> None:
    sizes: list[tuple[int, int]] = []

    async def main() -> None:
        hub = HubChardev("console")
        hub.open()
        shell: Shell | None = None

        def resize(rows: int, cols: int) -> None:
            sizes.append((rows, cols))
            if shell is not None:
                shell.resize(rows, cols)

        console = WebConsole(hub, on_resize=resize)
        await console.start()
        shell = Shell(hub)
        try:
            await in_browser(lambda browser: session(browser, console, tmp_path))
        finally:
            console.close()
            await shell.aclose()
            hub.close()

    async def session(browser: Any, console: WebConsole, tmp_path: Path) -> None:
        errors: list[str] = []
        rw = await open_page(browser, console.urls["rw"], errors)
        await rw.locator(".xterm").click()
        await rw.keyboard.type("echo typed-$((6*7))")
        await rw.keyboard.press("Enter")
        await wait_text(rw, "typed-42")
        assert sizes and all(rows > 1 and cols > 10 for rows, cols in sizes)

        # A late joiner gets the replay, then live output.
        ro = await open_page(browser, console.urls["ro"], errors)
        await wait_text(ro, "typed-42")
        assert await ro.locator("#role").inner_text() == "read-only"
        await rw.keyboard.type("echo live-$((2+3))")
        await rw.keyboard.press("Enter")
        await wait_text(ro, "live-5")

        # The read-only page does not send keys, and input sent anyway is refused.
        await ro.locator(".xterm").click()
        await ro.keyboard.type("echo page-$((1+1))")
        await ro.keyboard.press("Enter")
        token = console.urls["ro"].rpartition("=")[2]
        await ro.evaluate(SEND_AS_PAGE, [token, "echo sneaked-$((3+4))\r"])
        sneaking = console.viewers[-1]
        assert sneaking.role is Role.READ_ONLY
        for _ in range(100):
            if sneaking.refused == 2:  # one input, one resize
                break
            await asyncio.sleep(0.05)
        assert sneaking.refused == 2
        await ro.evaluate("() => window.sneaking.close()")
        await rw.keyboard.type("echo after-$((5+5))")
        await rw.keyboard.press("Enter")
        await wait_text(ro, "after-10")
        for page in (rw, ro):
            text = await screen_text(page)
            assert "page-" not in text and "sneaked" not in text, text
        assert (5, 7) not in sizes

        await rw.screenshot(path=str(tmp_path / "console-rw.png"))
        await ro.screenshot(path=str(tmp_path / "console-ro.png"))
        assert (tmp_path / "console-rw.png").stat().st_size > 1000

        # A reload reconnects and replays what came before.
        await ro.reload()
        await ro.wait_for_selector('body[data-status="connected"]', timeout=TIMEOUT_MS)
        await wait_text(ro, "after-10")
        assert "typed-42" in await screen_text(ro)
        assert not errors

    asyncio.run(main())


def test_the_page_over_tls(tmp_path: Path) -> None:
    creds = make_creds(str(tmp_path), server_names=("127.0.0.1",))

    async def main() -> None:
        hub = HubChardev("console")
        hub.open()
        guest = Frontend(hub)
        server_creds = X509Credentials(creds.server, "server", verify_peer=False)
        console = WebConsole(hub, tls_creds=server_creds)
        await console.start()
        assert guest.write(b"over tls\r\n") == 10

        async def use(browser: Any) -> None:
            context = await browser.new_context(ignore_https_errors=True)
            errors: list[str] = []
            page = await open_page(context, console.urls["ro"], errors)
            await wait_text(page, "over tls")
            # The guest has not opened its end: the page says the device is gone,
            # and says so no more once it opens.
            await page.wait_for_selector('body[data-device="gone"]', timeout=TIMEOUT_MS)
            assert "device gone" in await page.locator("#status").inner_text()
            guest.set_open(True)
            await page.wait_for_selector('body[data-device="open"]', timeout=TIMEOUT_MS)
            assert await page.locator("#status").inner_text() == "connected"
            assert not errors
            await page.screenshot(path=str(tmp_path / "console-tls.png"))
            await context.close()

        try:
            await in_browser(use)
        finally:
            console.close()
            guest.deinit()
            hub.close()

    asyncio.run(main())
