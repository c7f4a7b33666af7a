"""Nothing in the pages reaches outside the gateway (no CDN, no absolute URLs)."""

from __future__ import annotations

import re

from gateway.pages import WEB_DIR


def test_no_external_urls_in_the_pages() -> None:
    for path in WEB_DIR.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert not re.search(r"(?:src|href|from|url\()\s*=?\s*[\"'(]?https?://", text), path
            assert "//cdn" not in text, path
