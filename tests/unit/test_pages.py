"""The pages: nothing reaches outside the gateway (no CDN, no absolute URLs); the client config."""

from __future__ import annotations

import re

from gateway.pages import WEB_DIR, client_config
from gateway.settings import Settings


def test_no_external_urls_in_the_pages() -> None:
    for path in WEB_DIR.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert not re.search(r"(?:src|href|from|url\()\s*=?\s*[\"'(]?https?://", text), path
            assert "//cdn" not in text, path


def test_config_carries_configured_ice_servers() -> None:
    settings = Settings(ice_servers=("stun:stun.example.org:3478", "turn:turn.example.org"))
    assert client_config(settings, now=0.0)["iceServers"] == [
        {"urls": ["stun:stun.example.org:3478", "turn:turn.example.org"]}
    ]
