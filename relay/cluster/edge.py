"""An edge (relay) node: pulls each stream ONCE from its upstream and fans it out to local viewers.

``EdgeService`` owns the pulls (room -> ``UpstreamLink`` + its hub); ``ViewerService`` serves the
viewers from those hubs; ``create_edge_app`` is the node's ASGI app (the WHEP endpoint, health,
the cluster view). A pull ends when the upstream closes the link or goes silent and unreachable
(the hub closes: local viewers see the end; the next viewer POST pulls again), or when it has had
no local viewer for ``idle_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.auth.turn import IceDirectory
from relay.cluster.link import LinkConfig, UpstreamLink, open_link
from relay.cluster.node import ClusterNode, TemporaryRedirect, link_token
from relay.errors import ServiceUnavailable
from relay.http.common import CorsHeaders, check_room
from relay.http.keys import KeyAuth
from relay.http.problems import install_problem_handlers, problem_responses
from relay.http.whep import HubSelection, current_selection, whep_router
from relay.media.hub import FanoutHub
from relay.messages.service import RoomChannels
from relay.messages.ws import messages_router
from relay.ops.loop_lag import LoopLagMonitor
from relay.rtc.peer import CLOSED_STATES
from relay.rtc.transport import NodeTransport
from relay.rtc.viewers import ViewerService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    link: LinkConfig
    idle_grace: float = 10.0  # a pull with no local viewer for this long is torn down
    silence_timeout: float = 3.0  # no media this long: probe the upstream, end if it is gone
    connect_timeout: float = 10.0  # a pull that brings no media within this is given up
    link_token_ttl: float = 3600.0


def pull_key(room: str, selection: HubSelection) -> str:
    """One pull per room and selection (rendition, one anchor's stream): the upstream query."""
    query = urlencode(
        [(k, v) for k, v in (("rendition", selection.rendition), ("anchor", selection.anchor)) if v]
    )
    return f"{room}?{query}" if query else room


@dataclass(eq=False)
class Pull:
    link: UpstreamLink
    key: str
    task: asyncio.Task[None] | None = None
    idle_since: float | None = None
    ended_reason: str | None = None
    started_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class PullStats:
    opened: int = 0
    failed: int = 0
    ended: dict[str, int] = field(default_factory=dict)


class EdgeService:
    def __init__(
        self,
        config: EdgeConfig,
        tokens: TokenAuthority,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._tokens = tokens
        self._clock = clock
        self.pulls: dict[str, Pull] = {}
        self._pending: dict[str, asyncio.Task[Pull]] = {}
        self._http = httpx.AsyncClient()
        self.viewer_count: Callable[[str], int] = lambda room: 0
        self.stats = PullStats()
        self.upstream_doubts = 0  # bumped when the upstream seems gone: every pull probes it

    def live_hub(self, room: str) -> FanoutHub | None:
        """The hub of ``room`` for the selection of the request being served (if pulled)."""
        return self.hub_for(pull_key(room, current_selection()))

    def hub_for(self, key: str) -> FanoutHub | None:
        pull = self.pulls.get(key)
        if pull is None or pull.link.hub.closed.is_set():
            return None
        return pull.link.hub

    async def ensure_pull(self, room: str, selection: HubSelection | None = None) -> FanoutHub:
        """The local hub of ``room`` (and rendition/anchor), pulling it from upstream first if
        needed (once, however many viewers ask at the same time)."""
        key = pull_key(room, selection or HubSelection())
        hub = self.hub_for(key)
        if hub is not None:
            return hub
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._open(room, key), name=f"pull-open-{key}")
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        pull = await asyncio.shield(task)
        return pull.link.hub

    async def _open(self, room: str, key: str) -> Pull:
        cfg = self.config
        token = link_token(self._tokens, room, cfg.link.node_id, cfg.link_token_ttl)
        query = key.partition("?")[2]
        try:
            link = await open_link(cfg.link, room, token, self._http, query=query)
        except Exception:
            self.stats.failed += 1
            raise
        pull = Pull(link, key)
        self.pulls[key] = pull
        self.stats.opened += 1
        pull.task = asyncio.create_task(self._watch(pull), name=f"pull-{key}")
        log.info(
            "pulling %s from %s (%s)",
            key,
            cfg.link.upstream,
            {k: c.name for k, c in link.hub.codecs.items()},
            extra={"room": room, "event": "pull.started"},
        )
        return pull

    async def _watch(self, pull: Pull) -> None:
        cfg = self.config
        link = pull.link
        room = link.room
        probe_after = cfg.silence_timeout
        doubts = self.upstream_doubts
        try:
            while True:
                await asyncio.sleep(0.2)
                now = self._clock()
                if link.pc.connectionState in CLOSED_STATES:
                    pull.ended_reason = f"upstream connection {link.pc.connectionState}"
                    break
                if link.hub.closed.is_set():
                    pull.ended_reason = pull.ended_reason or "closed"
                    break
                if link.hub.viewer_count == 0 and self.viewer_count(room) == 0:
                    pull.idle_since = pull.idle_since or now
                    if now - pull.idle_since >= cfg.idle_grace:
                        pull.ended_reason = "idle"
                        break
                else:
                    pull.idle_since = None
                if doubts != self.upstream_doubts:  # the presence link to the upstream broke
                    doubts = self.upstream_doubts
                    if not await self._upstream_live(pull.key):
                        pull.ended_reason = "upstream lost"
                        break
                last = link.last_media_at
                if last is None:
                    if now - pull.started_at > cfg.connect_timeout:
                        pull.ended_reason = "no media from upstream"
                        break
                    continue
                if now - last > probe_after:
                    if not await self._upstream_live(pull.key):
                        pull.ended_reason = "upstream lost"
                        break
                    probe_after = now - last + cfg.silence_timeout  # frozen but live: wait more
                else:
                    probe_after = cfg.silence_timeout
        except asyncio.CancelledError:
            pull.ended_reason = pull.ended_reason or "shutdown"
        finally:
            await self._end(pull)

    async def _upstream_live(self, key: str) -> bool:
        cfg = self.config
        url = f"{cfg.link.upstream.rstrip('/')}/whep/{key}"
        # HEAD needs the credential a pull needs (a private room's liveness is its secret)
        token = link_token(self._tokens, key.partition("?")[0], cfg.link.node_id, 60)
        try:
            resp = await self._http.head(
                url, headers={"Authorization": f"Bearer {token}"}, timeout=1.0
            )
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _end(self, pull: Pull) -> None:
        room = pull.link.room
        if self.pulls.get(pull.key) is pull:
            del self.pulls[pull.key]
        reason = pull.ended_reason or "unknown"
        self.stats.ended[reason] = self.stats.ended.get(reason, 0) + 1
        pull.link.hub.close()  # local viewers' tracks end; their sessions close
        delete = reason in ("idle", "shutdown")
        await pull.link.close(self._http, delete=delete)
        log.info(
            "pull of %s ended: %s", pull.key, reason, extra={"room": room, "event": "pull.ended"}
        )

    def doubt_upstream(self) -> None:
        self.upstream_doubts += 1

    def egress_rooms(self) -> tuple[str, ...]:
        """Rooms this edge pulls now (any selection)."""
        return tuple(sorted({p.link.room for k, p in self.pulls.items() if self.hub_for(k)}))

    async def shutdown(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        pulls = list(self.pulls.values())
        for pull in pulls:
            if pull.task is not None:
                pull.task.cancel()
        await asyncio.gather(*(p.task for p in pulls if p.task is not None), return_exceptions=True)
        await self._http.aclose()


@dataclass(eq=False)
class EdgeNode:
    """Everything one edge process owns; reachable as ``app.state.edge``."""

    edge: EdgeService
    viewers: ViewerService
    access: AccessPolicy
    cluster: ClusterNode
    lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    messages: RoomChannels | None = None  # room channels (chat, likes) from the message bus
    transport: NodeTransport = field(default_factory=NodeTransport)

    async def start(self) -> None:
        await self.transport.start()
        self.lag.start()
        self.cluster.on_upstream_lost = self.edge.doubt_upstream
        await self.cluster.start()
        if self.messages is not None:
            await self.messages.start()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self.cluster.set_draining(True)
        await self.viewers.shutdown()
        await self.edge.shutdown()
        if self.messages is not None:
            await self.messages.stop()
        await self.cluster.stop()
        await self.lag.stop()
        await self.transport.close()


def create_edge_app(
    node: EdgeNode,
    *,
    max_sdp_bytes: int = 64 * 1024,
    ice: IceDirectory | None = None,
    cors_origin: str = "*",
    ops_keys: tuple[str, ...] = (),
) -> FastAPI:
    """``ops_keys``: the keys (operator key, metrics token) ``/cluster`` takes; it names rooms,
    private ones included. Empty: open (an app embedded behind its own guard)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.shutdown()

    app = FastAPI(
        title="stagecast relay",
        version="0.1.0",
        summary="An edge: pulls each stream once from its upstream, serves WHEP audiences.",
        lifespan=lifespan,
    )
    app.state.edge = node
    install_problem_handlers(app)
    app.add_middleware(CorsHeaders, allow_origin=cors_origin)

    async def gate(request: Request) -> None:
        """Before a viewer's POST: read the room's policy as its origin published it, authorize
        by it (a private room needs an audience token, as at the origin), route (307/503), then
        make sure the pull runs."""
        room = request.path_params.get("room")
        if room is None or "session_id" in request.path_params:
            return
        room = str(room)
        if request.method in ("POST", "HEAD") and "mixminus" in request.query_params:
            # an anchor's mix-minus is mixed where the anchors are: send it up the tree (each
            # parent relay does the same, the origin serves it; clients follow 307, RFC 9725)
            check_room(room)
            upstream = node.edge.config.link.upstream.rstrip("/")
            raise TemporaryRedirect(f"{upstream}/whep/{room}?{request.url.query}")
        if request.method != "POST":
            return
        check_room(room)
        await node.cluster.refresh_room_policy(room)
        await node.cluster.refresh_view()
        node.access.authorize(
            room,
            "audience",
            request.headers.get("authorization"),
            request.query_params.get("access_token"),
        )
        node.cluster.check_whep_post(request, room)
        if node.cluster.draining:
            raise ServiceUnavailable("this relay is draining", retry_after=2)
        q = request.query_params
        await node.edge.ensure_pull(room, HubSelection(q.get("rendition"), q.get("anchor")))

    app.include_router(
        whep_router(node.viewers, node.access, max_sdp_bytes=max_sdp_bytes, ice=ice),
        dependencies=[Depends(gate)],
    )
    ops = APIRouter(tags=["ops"])
    guarded = [Depends(KeyAuth(*ops_keys, what="operator key"))] if ops_keys else []

    @ops.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @ops.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = not node.cluster.draining
        body = {
            "status": "ready" if ready else "draining",
            "pulls": len(node.edge.egress_rooms()),  # probes are anonymous: no room names
            "viewers": node.viewers.count(),
            "registered": node.cluster.status.registered,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @ops.get(
        "/cluster", dependencies=guarded, responses=problem_responses(401) if guarded else None
    )
    async def cluster_view() -> JSONResponse:
        """This node's record, its view of the cluster (nodes, room policies) and its pulls."""
        c = node.cluster
        return JSONResponse(
            {
                "me": asdict(c.me),
                "nodes": [asdict(n) for n in c.view],
                "registered": c.status.registered,
                "registrations": c.status.registrations,
                "room_policies": {room: asdict(p) for room, p in sorted(c.policies.items())},
                "pulls": {
                    room: {
                        "packets": p.link.packets,
                        "viewers": p.link.hub.viewer_count,
                        "fanout_cpu_s": round(p.link.hub.stats.fanout_cpu_seconds, 6),
                    }
                    for room, p in node.edge.pulls.items()
                },
                "pull_stats": {
                    "opened": node.edge.stats.opened,
                    "failed": node.edge.stats.failed,
                    "ended": node.edge.stats.ended,
                },
            }
        )

    app.include_router(ops)
    app.include_router(node.cluster.presence_router())  # its children's (edges of edges)
    if node.messages is not None:
        app.include_router(
            messages_router(node.messages, node.access, before=node.cluster.refresh_room_policy)
        )
    return app
