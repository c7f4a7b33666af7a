"""The watch page in headless Chromium waits for a room that is not live yet (409) or a node
that is full (503) as long as the gateway's Retry-After says, never sooner, and plays once it
can. (Eyevinn's webrtc-player gives up on the first 409; the README shows how to wait.)"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from tests.support.server import run_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RETRY_AFTER = 3
pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    if not os.path.exists(CHROMIUM):
        return f"chromium is not installed at {CHROMIUM}"
    return None


if why := _missing():
    if os.environ.get("CI"):
        raise RuntimeError(f"{why}; scripts/bootstrap installs it")
    pytest.skip(f"{why} (scripts/bootstrap installs it)", allow_module_level=True)


@asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    playwright_api = importlib.import_module("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            timeout=20_000,
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class WatchPage:
    """A watch page and the times of its WHEP offers (POSTs) with their answers' status."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.offers: list[tuple[float, int]] = []
        page.on("response", self._on_response)

    def _on_response(self, response: Any) -> None:
        if response.request.method == "POST" and "/whep/" in response.url:
            self.offers.append((time.monotonic(), response.status))

    async def state(self) -> Any:
        return await self.page.evaluate("window.stagecast && window.stagecast.state")

    async def until(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await self.page.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression}: {await self.state()} {self.offers}")
            await asyncio.sleep(0.1)

    def gaps(self, status: int) -> list[float]:
        times = [t for t, s in self.offers if s == status]
        return [b - a for a, b in itertools.pairwise(times)]


async def open_watch(chromium: Any, url: str) -> WatchPage:
    page = await (await chromium.new_context()).new_page()
    watch = WatchPage(page)
    await page.goto(url)
    return watch


@pytest.mark.timeout(90)
async def test_watch_page_waits_as_long_as_retry_after_says() -> None:
    with run_server(
        sessions={"retry_after": RETRY_AFTER}, rooms={"max_viewers_per_node": 1}
    ) as server:
        async with browser() as chromium:
            early = await open_watch(chromium, f"{server.base_url}/watch?room=later")
            await early.until("window.stagecast.state === 'waiting'", 10)
            await asyncio.sleep(2.5 * RETRY_AFTER)
            assert await early.state() == "waiting"
            refused = early.gaps(409)
            assert len(refused) >= 1, early.offers  # it does retry ...
            assert min(refused) >= RETRY_AFTER - 0.3, refused  # ... never before Retry-After

            pub = await whip_publish(
                server.base_url,
                "later",
                server.anchor_token("later"),
                video=StampedVideoTrack(320, 180, 30),
                audio=ToneAudioTrack(440),
            )
            try:
                await early.until("window.stagecast.framesPresented > 10", RETRY_AFTER + 15)

                # the node is full (one viewer at most): 503 + Retry-After, same patience
                late = await open_watch(chromium, f"{server.base_url}/watch?room=later")
                await late.until(
                    "document.querySelector('#message') && window.stagecast.connects > 0", 10
                )
                await asyncio.sleep(2.5 * RETRY_AFTER)
                full = late.gaps(503)
                assert len(full) >= 1, late.offers
                assert min(full) >= RETRY_AFTER - 0.3, full
                assert await late.state() != "error"

                # a place frees up: the late viewer gets in at its next try
                await early.page.close()
                await late.until("window.stagecast.framesPresented > 10", RETRY_AFTER + 15)
            finally:
                await pub.close()
