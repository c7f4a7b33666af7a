"""The browser pages (publish, watch, console) and the client settings they read.

The pages are static files in ``gateway/web`` (plain ES modules, no build step); the only
dynamic part is ``/config.json``: the ICE servers from ``settings.ice_servers`` (none by default,
so a browser uses host candidates only, like the gateway itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .settings import Settings

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


def client_config(settings: Settings) -> dict[str, Any]:
    """What a page needs to connect: ``RTCConfiguration.iceServers`` and a few switches."""
    ice_servers = [{"urls": list(settings.ice_servers)}] if settings.ice_servers else []
    return {
        "iceServers": ice_servers,
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

    config = client_config(settings)

    @router.api_route("/config.json", methods=["GET", "HEAD"])
    async def config_json() -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    return router


def mount_pages(app: FastAPI, settings: Settings) -> None:
    """Serves the pages at ``/``, ``/publish``, ``/watch``, ``/console``; assets at ``/static``."""
    app.include_router(pages_router(settings))
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
