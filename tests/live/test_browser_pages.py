"""The pages over plain HTTP: routes, content types, security headers, the client config, and
that nothing reaches outside the gateway (no CDN, no absolute URLs)."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.pages import PAGES, WEB_DIR
from tests.support.server import RunningServer, run_server


@pytest.mark.parametrize("path", sorted(PAGES))
def test_pages_are_served(server: RunningServer, path: str) -> None:
    resp = httpx.get(server.base_url + path, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp
    assert resp.headers["cache-control"] == "no-cache"
    # every asset a page names is served, with a type a browser accepts for it
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', resp.text):
        got = httpx.get(f"{server.base_url}/{asset}", timeout=5)
        assert got.status_code == 200, asset
        if asset.endswith(".js"):
            assert "javascript" in got.headers["content-type"]


def test_modules_import_only_siblings(server: RunningServer) -> None:
    for module in sorted((WEB_DIR / "static" / "js").glob("*.js")):
        text = module.read_text()
        for spec in re.findall(r"from '([^']+)'", text):
            assert spec.startswith("./"), f"{module.name} imports {spec}"
            resp = httpx.get(f"{server.base_url}/static/js/{spec[2:]}", timeout=5)
            assert resp.status_code == 200, spec


def test_config_json_defaults_to_no_ice_servers(server: RunningServer) -> None:
    resp = httpx.get(server.base_url + "/config.json", timeout=5)
    assert resp.status_code == 200
    config = resp.json()
    assert config["iceServers"] == []
    assert config["gatherTimeoutMs"] > 0


def test_config_json_carries_configured_ice_servers() -> None:
    """Over HTTP (no peer connection is made, so nothing leaves the machine)."""
    with run_server(ice_servers=("stun:stun.example.org:3478",)) as srv:
        resp = httpx.get(srv.base_url + "/config.json", timeout=5)
        assert resp.json()["iceServers"] == [{"urls": ["stun:stun.example.org:3478"]}]


def test_pages_stay_out_of_the_api_schema(server: RunningServer) -> None:
    schema = httpx.get(server.base_url + "/openapi.json", timeout=5).json()
    assert not {"/", "/publish", "/watch", "/console", "/config.json"} & set(schema["paths"])
