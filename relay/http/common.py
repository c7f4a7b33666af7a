"""HTTP plumbing shared by the WHIP and WHEP endpoints: bodies, content types, CORS, ETags."""

from __future__ import annotations

import re

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
EXPOSED = "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After"
# No leading dot: a room name becomes a directory name (HLS, recordings), and "." or ".." would
# name the directory itself or its parent.
ROOM_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
ROOM_RULE = "room names are 1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot"


def check_room(room: str) -> None:
    if not ROOM_PATTERN.fullmatch(room):
        raise Unprocessable(ROOM_RULE)


def require_content_type(request: Request, expected: str) -> None:
    got = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if got != expected:
        raise UnsupportedMediaType(f"Content-Type must be {expected}, got {got or 'none'}")


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def preflight_headers(methods: str, origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": EXPOSED,
        "Access-Control-Max-Age": "86400",
    }


class CorsHeaders:
    """Adds the response-side CORS headers a browser WHIP/WHEP client needs to read Location etc.

    Plain ASGI (Starlette's BaseHTTPMiddleware runs every request through a task group and
    memory streams: ~0.3 ms of each join)."""

    def __init__(self, app: ASGIApp, allow_origin: str = "*") -> None:
        self.app = app
        self.allow_origin = allow_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(k == b"origin" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        extra = (
            (b"access-control-allow-origin", self.allow_origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED.encode("latin-1")),
        )

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)
