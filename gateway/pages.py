"""The browser pages (publish, watch, console) and the client settings they read.

The pages are static files in ``gateway/web`` (plain ES modules, no build step); the only
dynamic part is ``/config.json``: the ICE servers from ``settings.ice_servers`` (none by default,
so a browser uses host candidates only, like the gateway itself) and, with ``turn.urls``, a TURN
credential made for this request (never the shared secret) -- to anyone while the audience may
watch anonymously (they get one from any WHEP POST anyway), otherwise only to a request that
shows a token this node signed, so the TURN server is no open relay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Header
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from relay.auth.tokens import TokenAuthority, bearer_token
from relay.errors import Unauthorized

from .settings import Settings, ice_directory

WEB_DIR = Path(__file__).with_name("web")

PAGES = {
    "/": "index.html",
    "/publish": "publish.html",
    "/watch": "watch.html",
    "/console": "console.html",
    "/call": "call.html",
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


def client_config(
    settings: Settings, now: float, subject: str | None = PAGE_SUBJECT
) -> dict[str, Any]:
    """What a page needs to connect: ``RTCConfiguration.iceServers`` and a few switches.
    ``subject`` None: the fixed ICE URLs only, no TURN credential."""
    ice = ice_directory(settings)
    servers = ice.servers(subject, now) if subject is not None else ice.servers_without_turn()
    return {
        "iceServers": [s.as_json() for s in servers],
        "gatherTimeoutMs": GATHER_TIMEOUT_MS,
        "anonymousAudience": settings.auth.anonymous_audience,
    }


def pages_router(settings: Settings, tokens: TokenAuthority) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def credential_subject(authorization: str | None) -> str | None:
        """Whom a TURN credential is made for, or None when this caller gets none."""
        try:
            token = bearer_token(authorization)
            if token is not None:
                return tokens.claims(token).subject
        except Unauthorized:
            return None
        return PAGE_SUBJECT if settings.auth.anonymous_audience else None

    def page(filename: str) -> Any:
        path = WEB_DIR / filename

        async def serve() -> FileResponse:
            return FileResponse(path, media_type="text/html", headers=PAGE_HEADERS)

        return serve

    for url, filename in PAGES.items():
        # HEAD too (RFC 9110 §9.3.2): the same headers, no body
        router.add_api_route(url, page(filename), methods=["GET", "HEAD"], name=f"page:{filename}")

    @router.api_route("/config.json", methods=["GET", "HEAD"])
    async def config_json(authorization: str | None = Header(default=None)) -> JSONResponse:
        # no-store: it may carry a TURN credential that expires
        config = client_config(settings, time.time(), credential_subject(authorization))
        return JSONResponse(config, headers={"Cache-Control": "no-store"})

    return router


def mount_pages(app: FastAPI, settings: Settings, tokens: TokenAuthority) -> None:
    """Serves the pages at ``/``, ``/publish``, ``/watch``, ``/console``, ``/call``; assets at
    ``/static``."""
    app.include_router(pages_router(settings, tokens))
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
