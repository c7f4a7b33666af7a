"""The response-side CORS headers (relay.http.common.CorsHeaders), in process over ASGI."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.http.common import EXPOSED, CorsHeaders


async def created(request: Request) -> Response:
    return Response("v=0\r\n", 201, headers={"Location": "/whep/r/1"})


async def own_origin(request: Request) -> Response:
    return Response("", 200, headers={"Access-Control-Allow-Origin": "https://own.test"})


async def test_cors_headers_only_for_cross_origin_requests_and_never_overriding() -> None:
    app = CorsHeaders(
        Starlette(routes=[Route("/c", created, methods=["POST"]), Route("/o", own_origin)]),
        allow_origin="*",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as client:
        cross = await client.post("/c", headers={"Origin": "https://page.test"}, content=b"v=0")
        assert cross.status_code == 201 and cross.text == "v=0\r\n"
        assert cross.headers["access-control-allow-origin"] == "*"
        assert cross.headers["access-control-expose-headers"] == EXPOSED
        assert cross.headers["location"] == "/whep/r/1"
        same = await client.post("/c", content=b"v=0")
        assert "access-control-allow-origin" not in same.headers
        own = await client.get("/o", headers={"Origin": "https://page.test"})
        assert own.headers.get_list("access-control-allow-origin") == ["https://own.test"]
        assert own.headers["access-control-expose-headers"] == EXPOSED
