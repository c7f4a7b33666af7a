"""The browser pages (publish, watch, console) and the client settings they read.

The pages are static files in ``gateway/web`` (plain ES modules, no build step); the only
dynamic part is ``/config.json``: the ICE servers from ``settings.ice_servers`` (none by default,
so a browser uses host candidates only, like the gateway itself) and, with ``turn.urls``, a TURN
credential made for this request (never the shared secret).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .settings import Settings, ice_directory

WEB_DIR = Path(__file__).with_name("web")

PAGES = {
    "/": "index.html",
    "/publish": "publish.html",
    "/watch": "watch.html",
    "/console": "console.html",
}

# Same-origin scripts and styles only; media may come from getUserMedia and WebRTC. connect-src
# stays open: a WHIP/WHEP server may answer with a 307 to another node.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src *; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

GATHER_TIMEOUT_MS = 1500
"""How long a page waits for ICE gathering before it sends its offer with what it has."""


PAGE_SUBJECT = "page"
"""The subject of the TURN credentials /config.json hands out (the pages have no token yet)."""


def client_config(settings: Settings, now: float) -> dict[str, Any]:
    """What a page needs to connect: ``RTCConfiguration.iceServers`` and a few switches."""
    servers = ice_directory(settings).servers(PAGE_SUBJECT, now)
    return {
        "iceServers": [s.as_json() for s in servers],
        "gatherTimeoutMs": GATHER_TIMEOUT_MS,
        "anonymousAudience": settings.auth.anonymous_audience,
    }


def pages_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def page(filename: str) -> Any:
        path = WEB_DIR / filename

        async def serve() -> FileResponse:
            return FileResponse(path, media_type="text/html", headers=PAGE_HEADERS)

        return serve

    for url, filename in PAGES.items():
        # HEAD too (RFC 9110 §9.3.2): the same headers, no body
        router.add_api_route(url, page(filename), methods=["GET", "HEAD"], name=f"page:{filename}")

    @router.api_route("/config.json", methods=["GET", "HEAD"])
    async def config_json() -> JSONResponse:
        # no-store: it may carry a TURN credential that expires
        config = client_config(settings, time.time())
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    return router


def mount_pages(app: FastAPI, settings: Settings) -> None:
    """Serves the pages at ``/``, ``/publish``, ``/watch``, ``/console``; assets at ``/static``."""
    app.include_router(pages_router(settings))
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
