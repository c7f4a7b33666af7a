"""The pages' room chat in headless Chromium: a line typed on the watch page appears on the
publish page (and back), likes clicked on one page move the counter on the other."""

from __future__ import annotations

import pytest

from tests.live.test_browser import chromium, open_page, until
from tests.support.server import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.timeout(90)
async def test_a_chat_line_typed_on_the_watch_page_appears_on_the_publish_page(
    server: RunningServer,
) -> None:
    room = "pagechat"
    viewer = server.gateway.tokens.mint(room, "audience", "alice", 600)
    anchor = server.gateway.tokens.mint(room, "anchor", "host", 600)
    async with chromium(fake_media=True) as browser:
        watch = await open_page(browser, f"{server.base_url}/watch?room={room}#token={viewer}")
        publish = await open_page(browser, f"{server.base_url}/publish?room={room}#token={anchor}")
        for page in (watch, publish):
            await until(page, "window.stagecastChat && stagecastChat.state === 'live'", 10)
        await watch.fill(".chat-input", "hello from the audience")
        await watch.press(".chat-input", "Enter")
        line = publish.locator(".chat-log li", has_text="hello from the audience")
        await line.wait_for(timeout=5000)
        assert "alice" in await line.inner_text()
        await publish.fill(".chat-input", "thanks for watching")
        await publish.click(".chat-send")
        await watch.locator(".chat-log li", has_text="host ★").wait_for(timeout=5000)
        for _ in range(5):
            await publish.click(".chat-like")
        await until(watch, "stagecastChat.likes === 5", 5)
        assert await watch.locator(".chat-likes").inner_text() == "5"
        assert watch.errors == [] and publish.errors == []
