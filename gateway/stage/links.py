"""Cross-room co-hosting (TRTC's connectOtherRoom, the "PK"): anchor X of room B on the stage
of room A, as a guest tile of A's program.

A link copies X's own stream (``/whep/B?anchor=X``) into a guest hub that A's director takes as
one more input. Where X comes from: X's own hub when B's program is on this node (a direct
viewer of it, no peer connection), otherwise a pull over the internal link from the node that
owns B in the registry (``relay.cluster.edge.EdgeService``, one per upstream node, so two rooms
here linking the same guest pull it once). A symmetric PK is two links, one made on each room's
node. A link ends when it is unlinked, when the guest's stream ends (X left B, or B's node
went away: the pulled hub closes) or when A's program ends.

Audio: the guest's audio is mixed into A's program like an anchor's, so A's audience hears both
hosts. The guest's own mix-minus stays its own room's: X listens to B's mix-minus, which in a
symmetric PK already carries A's host (Y is a guest of B), so each host hears the other exactly
once and never itself; a one-way link gives X no return audio (X may pull A's program).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.auth.tokens import TokenAuthority
from relay.cluster.node import ClusterNode
from relay.cluster.registry import RegistryError
from relay.errors import Conflict, NotFound, Unprocessable
from relay.media.frames import EncodedFrame
from relay.media.hub import FanoutHub, Viewer
from relay.media.stream_key import StreamKey

from ..settings import Settings, node_ice
from .anchor_hub import AnchorHub
from .room import RoomService

if TYPE_CHECKING:  # the puller's side (relay.cluster.edge, .link) loads with the first link
    from relay.cluster.edge import EdgeService

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
WATCH_INTERVAL = 0.2  # s between checks that a guest's stream is still there


@dataclass(eq=False)
class GuestFeed:
    """The guest as room A's director sees it: an anchor feed whose hub is filled from the
    guest's own stream (``source``)."""

    id: str  # the guest anchor's id in its own room
    room: str  # the guest's own room
    hub: AnchorHub
    source: FanoutHub

    def request_keyframe(self) -> None:
        self.source.request_keyframe()


@dataclass(eq=False)
class RoomLink:
    room: str  # the host room (whose stage the guest joins)
    guest: GuestFeed
    via: str  # "local", or the id of the node the guest's stream is pulled from
    tap: Viewer
    upstream: str = ""  # that node's URL
    started_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.room, self.guest.id

    @property
    def stream(self) -> StreamKey:
        return StreamKey(self.guest.room, anchor=self.guest.id)

    def describe(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "guest_room": self.guest.room,
            "anchor_id": self.guest.id,
            "via": self.via,
        }


class LinkService:
    """Every cross-room link of this node's rooms; created and shut down by the app."""

    def __init__(
        self,
        settings: Settings,
        rooms: RoomService,
        cluster: ClusterNode | None,
        tokens: TokenAuthority,
        events: EventSink | None = None,
    ) -> None:
        self._settings = settings
        self._rooms = rooms
        self._cluster = cluster
        self._tokens = tokens
        self._events: EventSink = events or (lambda kind, data: None)
        self.links: dict[tuple[str, str], RoomLink] = {}
        self._pullers: dict[str, EdgeService] = {}  # upstream URL -> its pulls
        rooms.program_ended.append(self._program_ended)

    # -- where ------------------------------------------------------------------------------
    async def elsewhere(self, room: str) -> str | None:
        """The base URL of the node whose program ``room`` is, when that is another node
        (the request belongs there); None: this node (live here, or nowhere)."""
        if room in self._rooms.rooms or self._cluster is None:
            return None
        owner = await self._owner(room)
        return owner[1] if owner is not None else None

    async def _owner(self, room: str) -> tuple[str, str] | None:
        """(node id, URL) of the other node owning ``room`` in the registry."""
        cluster = self._cluster
        if cluster is None:
            return None
        try:
            node = await cluster.registry.stream_owner(room)
        except RegistryError:
            node = None
        if node is None or node == cluster.config.node_id:
            return None
        # the lease names a node that beat recently: its record, or the last one seen of it
        nodes = [*await cluster.current_nodes(), *cluster.view]
        record = next((n for n in nodes if n.id == node), None)
        return (node, record.url) if record is not None else None

    # -- link / unlink ----------------------------------------------------------------------
    async def link(self, room: str, guest_room: str, anchor_id: str) -> RoomLink:
        """Put anchor ``anchor_id`` of ``guest_room`` on ``room``'s stage. 404: no such live
        anchor; 409: the room is not live here, the anchor is already linked in, the stage is
        full, or the guest's room is not live."""
        if guest_room == room:
            raise Unprocessable("an anchor is on its own room's stage already")
        if (room, anchor_id) in self.links:
            raise Conflict(f"anchor {anchor_id!r} is already linked into room {room!r}")
        program = self._rooms.rooms.get(room)
        if program is None or not program.anchors:
            raise Conflict(f"room {room!r} is not live on this node", retry_after=1)
        source, via, upstream = await self._source(guest_room, anchor_id)
        if (room, anchor_id) in self.links:  # linked meanwhile (the pull took a while)
            raise Conflict(f"anchor {anchor_id!r} is already linked into room {room!r}")
        media = self._settings.media
        hub = AnchorHub(
            StreamKey(room, anchor=anchor_id),
            source.codecs,
            keyframe_interval=media.keyframe_interval,
            video_queue_frames=media.video_queue_frames,
            audio_queue_frames=media.audio_queue_frames,
        )
        guest = GuestFeed(anchor_id, guest_room, hub, source)
        hub.attach_source(guest.request_keyframe)
        tap = source.create_viewer(f"link:{room}:{secrets.token_hex(4)}", direct=True)

        def forward(frame: EncodedFrame) -> bool:
            hub.publish(frame)
            return True

        for q in tap.queues.values():
            q.bind(forward)
        link = RoomLink(room, guest, via, tap, upstream)
        try:
            self._rooms.add_guest(room, guest)  # 409: not live any more, already there, full
        except BaseException:
            hub.close()
            await self._release_pull(link)
            raise
        source.attach(tap)
        self.links[link.key] = link
        link.task = asyncio.create_task(self._watch(link), name=f"link-{room}-{anchor_id}")
        self._events("link.started", link.describe())
        log.info(
            "anchor %s of room %s linked into room %s (%s)",
            anchor_id,
            guest_room,
            room,
            via,
            extra={"room": room, "event": "link.started"},
        )
        return link

    async def _source(self, guest_room: str, anchor_id: str) -> tuple[FanoutHub, str, str]:
        """The guest's own stream: (hub, via, upstream URL)."""
        if guest_room in self._rooms.rooms:
            return self._rooms.anchor(guest_room, anchor_id).hub, "local", ""
        owner = await self._owner(guest_room)
        if owner is None:
            raise NotFound(f"room {guest_room!r} is not live on any node")
        node, url = owner
        hub = await self._puller(url).ensure_pull(StreamKey(guest_room, anchor=anchor_id))
        return hub, node, url

    def _puller(self, url: str) -> EdgeService:
        puller = self._pullers.get(url)
        if puller is None:
            from relay.cluster.edge import EdgeConfig, EdgeService
            from relay.cluster.link import LinkConfig

            s = self._settings
            media = s.media
            node = self._cluster.config.node_id if self._cluster is not None else "origin"
            config = EdgeConfig(
                link=LinkConfig(
                    upstream=url,
                    node_id=node,
                    ice_servers=node_ice(s),
                    keyframe_interval=media.keyframe_interval,
                    video_queue_frames=media.video_queue_frames,
                    audio_queue_frames=media.audio_queue_frames,
                    reassembly_wait=media.reassembly_wait,
                    retry_after=s.sessions.retry_after,
                ),
                idle_grace=3600.0,  # a link releases its pull itself when it ends
                silence_timeout=s.cluster.silence_timeout,
                connect_timeout=s.sessions.connect_timeout,
            )
            puller = self._pullers[url] = EdgeService(config, self._tokens)
        return puller

    def list(self, room: str) -> list[RoomLink]:
        return [link for (r, _), link in self.links.items() if r == room]

    def get(self, room: str, anchor_id: str) -> RoomLink:
        link = self.links.get((room, anchor_id))
        if link is None:
            raise NotFound(f"anchor {anchor_id!r} is not linked into room {room!r}")
        return link

    async def unlink(self, room: str, anchor_id: str, reason: str = "unlinked") -> None:
        link = self.get(room, anchor_id)
        task = link.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._end(link, reason)

    # -- ends -------------------------------------------------------------------------------
    async def _watch(self, link: RoomLink) -> None:
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                if link.guest.source.closed.is_set():
                    reason = "guest left"
                    break
                if link.room not in self._rooms.rooms:
                    reason = "room ended"
                    break
        except asyncio.CancelledError:
            return
        await self._end(link, reason)

    async def _end(self, link: RoomLink, reason: str) -> None:
        if self.links.get(link.key) is not link:
            return
        del self.links[link.key]
        link.guest.source.remove_viewer(link.tap)
        self._rooms.remove_guest(link.room, link.guest.id)
        link.guest.hub.close()
        await self._release_pull(link)
        self._events("link.ended", {**link.describe(), "reason": reason})
        log.info(
            "link of anchor %s into room %s ended: %s",
            link.guest.id,
            link.room,
            reason,
            extra={"room": link.room, "event": "link.ended"},
        )

    async def _release_pull(self, link: RoomLink) -> None:
        """Close the pull of the guest's stream unless another link here still uses it."""
        if not link.upstream:
            return
        users = [o for o in self.links.values() if o.upstream == link.upstream]
        if any(o.stream == link.stream for o in users):
            return
        puller = self._pullers.get(link.upstream)
        if puller is not None:
            await puller.release(link.stream)

    def _program_ended(self, room: str) -> None:
        for link in self.list(room):
            task = link.task
            if task is not None:
                task.cancel()
            link.task = asyncio.get_running_loop().create_task(self._end(link, "room ended"))

    async def shutdown(self) -> None:
        for link in list(self.links.values()):
            with contextlib.suppress(Exception):
                await self.unlink(link.room, link.guest.id, "shutdown")
        pullers, self._pullers = self._pullers, {}
        for puller in pullers.values():
            await puller.shutdown()
