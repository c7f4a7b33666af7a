"""HEAD answers what GET would, without the body (RFC 9110 §9.3.2: every general-purpose server
supports GET and HEAD): the pages, their assets and /config.json.
(HLS files: tests/live/test_hls_players.py.)"""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import run_server


@pytest.mark.timeout(30)
async def test_pages_answer_head_like_get() -> None:
    with run_server() as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            for path in ("/", "/watch", "/publish", "/console", "/config.json", "/static/app.css"):
                get, head = await client.get(path), await client.head(path)
                assert get.status_code == 200 and head.status_code == 200, (path, head)
                assert head.content == b""
                assert int(head.headers["content-length"]) == len(get.content) > 0, path
                for name in ("content-type", "cache-control", "content-security-policy"):
                    assert head.headers.get(name) == get.headers.get(name), (path, name)
