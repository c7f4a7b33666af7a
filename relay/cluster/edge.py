"""An edge's pulls: each stream pulled ONCE from the upstream and fanned out to local viewers.

``EdgeService`` owns the pulls (stream key -> ``UpstreamLink`` + its hub); ``ViewerService``
serves the viewers from those hubs; ``relay.server.edge`` assembles the node and its app. A pull
ends when the upstream closes the link or goes silent and unreachable
(the hub closes: local viewers see the end; the next viewer POST pulls again), or when it has had
no local viewer for ``idle_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.auth.tokens import TokenAuthority
from relay.cluster.link import LinkConfig, UpstreamLink, open_link
from relay.cluster.node import link_token
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.rtc.peer import CLOSED_STATES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    link: LinkConfig
    idle_grace: float = 10.0  # a pull with no local viewer for this long is torn down
    silence_timeout: float = 3.0  # no media this long: probe the upstream, end if it is gone
    connect_timeout: float = 10.0  # a pull that brings no media within this is given up
    link_token_ttl: float = 3600.0


@dataclass(eq=False)
class Pull:
    link: UpstreamLink
    key: StreamKey
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
        self.pulls: dict[StreamKey, Pull] = {}
        self._pending: dict[StreamKey, asyncio.Task[Pull]] = {}
        import httpx

        self._http = httpx.AsyncClient()
        self.viewer_count: Callable[[str], int] = lambda room: 0
        self.stats = PullStats()
        self.upstream_doubts = 0  # bumped when the upstream seems gone: every pull probes it

    def live_hub(self, key: StreamKey, subject: str | None = None) -> FanoutHub | None:
        """The viewers' hub lookup: the local hub of ``key`` if it is pulled (anyone may
        watch what the upstream let this edge pull)."""
        return self.hub_for(key)

    def hub_for(self, key: StreamKey) -> FanoutHub | None:
        pull = self.pulls.get(key)
        if pull is None or pull.link.hub.closed.is_set():
            return None
        return pull.link.hub

    async def ensure_pull(self, key: StreamKey) -> FanoutHub:
        """The local hub of ``key``, pulling it from upstream first if needed (once, however
        many viewers ask at the same time)."""
        hub = self.hub_for(key)
        if hub is not None:
            return hub
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._open(key), name=f"pull-open-{key}")
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        pull = await asyncio.shield(task)
        return pull.link.hub

    async def _open(self, key: StreamKey) -> Pull:
        cfg = self.config
        token = link_token(self._tokens, key.room, cfg.link.node_id, cfg.link_token_ttl)
        try:
            link = await open_link(cfg.link, key, token, self._http)
        except Exception:
            self.stats.failed += 1
            raise
        pull = Pull(link, key)
        self.pulls[key] = pull
        self.stats.opened += 1
        pull.task = asyncio.create_task(self._watch(pull), name=f"pull-{key}")
        link.pc.on("connectionstatechange", lambda: self._upstream_state(pull))
        log.info(
            "pulling %s from %s (%s)",
            key,
            cfg.link.upstream,
            {k: c.name for k, c in link.hub.codecs.items()},
            extra={"room": key.room, "event": "pull.started"},
        )
        return pull

    def _upstream_state(self, pull: Pull) -> None:
        """The upstream ended the pull (its stream ended, or the link failed): close the hub at
        once, so that a viewer asking in the meantime opens a new pull instead of joining this
        ending one (the watch, which polls, ends it and counts it)."""
        state = pull.link.pc.connectionState
        if state in CLOSED_STATES and not pull.link.hub.closed.is_set():
            pull.ended_reason = pull.ended_reason or f"upstream connection {state}"
            pull.link.hub.close()

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

    async def _upstream_live(self, key: StreamKey) -> bool:
        import httpx

        cfg = self.config
        url = cfg.link.upstream.rstrip("/") + key.path("/whep")
        # HEAD needs the credential a pull needs (a private room's liveness is its secret)
        token = link_token(self._tokens, key.room, cfg.link.node_id, 60)
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
        delete = reason in ("idle", "shutdown", "released")
        await pull.link.close(self._http, delete=delete)
        log.info(
            "pull of %s ended: %s", pull.key, reason, extra={"room": room, "event": "pull.ended"}
        )

    async def release(self, key: StreamKey) -> None:
        """End the pull of ``key`` now (its upstream session deleted), viewers or not: its one
        user is done with it (a cross-room link that ended)."""
        pull = self.pulls.get(key)
        if pull is None or pull.task is None:
            return
        pull.ended_reason = "released"
        pull.task.cancel()
        await asyncio.gather(pull.task, return_exceptions=True)

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
