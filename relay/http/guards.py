"""ASGI guards in front of every route: body size limit (413) and signalling rate limit (429)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.http.problems import PROBLEM_TYPE, TYPE_BASE
from relay.http.ratelimit import ClientRateLimiter, client_key

RATE_LIMITED_PREFIXES = ("/whip/", "/whep/")


def rate_limited(method: str, path: str) -> bool:
    """POSTs that open media sessions: WHIP/WHEP offers, and cross-room links (each may open a
    pull from another node)."""
    if method != "POST":
        return False
    return path.startswith(RATE_LIMITED_PREFIXES) or (
        path.startswith("/v1/rooms/") and path.rstrip("/").endswith("/links")
    )


async def _send_problem(
    send: Send, status: int, title: str, detail: str, slug: str, headers: dict[str, str]
) -> None:
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    ).encode()
    raw = [(b"content-type", PROBLEM_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuards:
    """Refuses oversized bodies before any handler runs, and rate-limits the POSTs that open
    media sessions per client address (``rate_limited``: the offer/answer work and the pulls
    are the expensive part of a signalling flood)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limiter: ClientRateLimiter | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if self.limiter is not None and rate_limited(method, path):
            client = scope.get("client") or ("unknown", 0)
            wait = self.limiter.check(client_key(str(client[0])), self.clock())
            if wait is not None:
                await _send_problem(
                    send,
                    429,
                    "Too many requests",
                    "too many session requests from this address",
                    "rate-limited",
                    {"Retry-After": str(wait)},
                )
                return
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        # Buffer the body (bounded) so a chunked upload cannot exceed the limit either.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await _send_problem(
            send,
            413,
            "Payload too large",
            f"request body exceeds {self.max_body_bytes} bytes",
            "payload-too-large",
            {},
        )
