"""Presence: a node holds a request open at its upstream (origin or parent relay) all the time,
so that each end learns from that TCP connection the moment the other's process is gone.

A killed process's kernel closes its connections at once (FIN or RST), long before its registry
record expires or a peer connection's ICE consent fails (30 s). The upstream, seeing a child's
presence request end without an answer, marks the child down in the registry (``ClusterNode
.mark_down``); the child, seeing the request fail, marks its upstream down and lets its pulls
check the upstream now. A node whose host hangs keeps its connections open: routing's
missed-heartbeat rule (``routing.missed_heartbeat``) takes it out of rotation instead.

Each request is held ``HOLD_BEATS`` heartbeats, then answered (the child asks again at once and
keeps two open, half a hold apart, so that one always is), so a server that shuts down waits for
it that long at most. The request is authenticated with a token of the cluster's secret for
``PRESENCE_ROOM`` (a name no room can have) whose subject is ``node:<id>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from relay.auth.tokens import LINK_SUBJECT_PREFIX, TokenAuthority, bearer_token
from relay.errors import NotFound, Unauthorized

log = logging.getLogger(__name__)

PRESENCE_PATH = "/cluster/presence"
PRESENCE_ROOM = ":cluster"  # check_room refuses ':': such a token opens no room
NODE_HEADER = "X-Stagecast-Node"
TOKEN_TTL = 3600.0  # a presence token's life; re-minted at half of it
HOLD_BEATS = 2.0
MIN_HOLD = 0.5


def hold_time(heartbeat: float) -> float:
    return max(MIN_HOLD, heartbeat * HOLD_BEATS)


def presence_token(tokens: TokenAuthority, node_id: str, ttl: float = 3600) -> str:
    return tokens.mint(PRESENCE_ROOM, "audience", LINK_SUBJECT_PREFIX + node_id, ttl)


async def client_left(receive: Receive, within: float) -> bool:
    """Whether the client's connection ends within ``within`` s (it has no body to read)."""
    try:
        async with asyncio.timeout(within):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return True
    except TimeoutError:
        return False


class _Held(Response):
    """The answer: headers (who this node is) at once, then the body held open ``hold`` s."""

    def __init__(self, me: str, hold: float, on_left: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self.me, self.hold, self.on_left = me, hold, on_left

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/plain"),
            (b"cache-control", b"no-store"),
            (NODE_HEADER.lower().encode(), self.me.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"present\n", "more_body": True})
        if await client_left(receive, self.hold):
            await self.on_left()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def presence_router(
    node_id: str,
    heartbeat: float,
    tokens: TokenAuthority | None,
    mark_down: Callable[[str, str], Awaitable[None]],
) -> APIRouter:
    """``GET /cluster/presence``: a child node's presence request (see the module); a child whose
    request breaks off is passed to ``mark_down`` (``ClusterNode.mark_down``)."""
    router = APIRouter(tags=["cluster"])

    @router.get(PRESENCE_PATH, include_in_schema=False, response_model=None)
    async def presence(request: Request) -> _Held:
        if tokens is None:
            raise NotFound("this node has no cluster secret")
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("a node's presence needs its token")
        claims = tokens.verify(token, room=PRESENCE_ROOM, role="audience")
        if not claims.subject.startswith(LINK_SUBJECT_PREFIX):
            raise Unauthorized("not a node's token")
        child = claims.subject.removeprefix(LINK_SUBJECT_PREFIX)

        async def left() -> None:
            await mark_down(child, "its presence connection closed")

        return _Held(node_id, hold_time(heartbeat), left)

    return router


async def hold_presence(
    upstream: str,
    node_id: str,
    tokens: TokenAuthority,
    heartbeat: float,
    on_lost: Callable[[str], Awaitable[None]],
) -> None:
    """A child's side, until cancelled: keep a presence request open at ``upstream``; when one
    that was answered breaks off (or the next cannot be made), call ``on_lost`` with the
    upstream's node id once, then keep trying every heartbeat.

    Two requests run, half a hold apart: between the end of one and the next there is a moment
    with none open, and a death in that moment would go unseen by the upstream."""
    held = _Holder(upstream, node_id, tokens, heartbeat, on_lost)
    async with asyncio.TaskGroup() as group:
        group.create_task(held.run(0.0))
        group.create_task(held.run(hold_time(heartbeat) / 2))


class _Holder:
    def __init__(
        self,
        upstream: str,
        node_id: str,
        tokens: TokenAuthority,
        heartbeat: float,
        on_lost: Callable[[str], Awaitable[None]],
    ) -> None:
        self.url = upstream.rstrip("/") + PRESENCE_PATH
        self.tokens, self.node_id = tokens, node_id
        self.token_ttl = TOKEN_TTL
        self._token, self._token_until = "", 0.0
        self.heartbeat = heartbeat
        self.hold = hold_time(heartbeat)
        self.on_lost = on_lost
        self.upstream_id = ""  # the upstream we hold presence with ("" while we do not)
        self.refused = 0  # the last refusal's status, said once

    async def run(self, delay: float) -> None:
        import httpx

        await asyncio.sleep(delay)
        timeout = httpx.Timeout(5.0, read=self.hold + max(2 * self.heartbeat, 2.0))
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                try:
                    token = self.fresh_token(time.monotonic())
                    headers = {"Authorization": f"Bearer {token}"}
                    async with client.stream("GET", self.url, headers=headers) as resp:
                        if resp.status_code != 200:
                            if resp.status_code != self.refused:
                                log.warning(
                                    "upstream %s refused presence: %s", self.url, resp.status_code
                                )
                            self.refused = resp.status_code
                            self._token_until = 0.0  # mint anew before asking again
                            await asyncio.sleep(max(self.heartbeat, 10.0))
                            continue
                        self.refused = 0
                        self.upstream_id = resp.headers.get(NODE_HEADER, "")
                        async for _ in resp.aiter_bytes():
                            pass
                    continue  # answered in full: ask again at once
                except httpx.HTTPError as exc:
                    await self._lost(exc)
                except Exception:
                    log.exception("presence at %s failed", self.url)
                await asyncio.sleep(self.heartbeat)

    def fresh_token(self, now: float) -> str:
        """A presence token with at least half its life left: one minted at start would expire
        under a long-running edge and end its presence (401 from then on)."""
        if now >= self._token_until:
            self._token = presence_token(self.tokens, self.node_id, self.token_ttl)
            self._token_until = now + self.token_ttl / 2
        return self._token

    async def _lost(self, exc: Exception) -> None:
        if not self.upstream_id:
            return  # not held (or the other request said so already)
        lost, self.upstream_id = self.upstream_id, ""
        log.warning("lost the upstream %s (%s): %r", lost, self.url, exc)
        try:
            await self.on_lost(lost)
        except Exception:
            log.exception("handling the loss of the upstream %s failed", lost)
