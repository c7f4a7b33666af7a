"""Every bridge of this node: created and deleted by the operator, following their rooms' hubs,
stopped with their room and at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from relay.errors import Conflict, NotFound, Unprocessable
from relay.media.hub import FanoutHub

from ..settings import BridgeSettings
from ..stage.table import Stage, StageTable
from .argv import BridgeKind

if TYPE_CHECKING:  # the machinery loads with the first bridge (a node may never have one)
    from .bridge import Bridge
    from .hls_output import HlsOutput

log = logging.getLogger(__name__)

RTMP_SCHEMES = ("rtmp", "rtmps")


def default_ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def check_rtmp_url(url: str | None) -> str:
    if not url:
        raise Unprocessable("an RTMP bridge needs a url (rtmp:// or rtmps://)")
    parts = urlsplit(url)
    if parts.scheme.lower() not in RTMP_SCHEMES or not parts.hostname:
        raise Unprocessable("the url must be rtmp://HOST[:PORT]/APP/KEY or rtmps://...")
    if any(c.isspace() for c in url) or url.startswith("-"):
        raise Unprocessable("the url must not contain white space")
    return url


class BridgeService:
    def __init__(
        self,
        settings: BridgeSettings,
        stages: StageTable,
        *,
        room_poll_interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self._stages = stages
        self._bridges: dict[str, Bridge] = {}
        self._hls: dict[str, HlsOutput] = {}
        self._rooms_seen: dict[str, Stage] = {}  # rooms created by the operator, as last seen
        self._poll = room_poll_interval
        self._watch: asyncio.Task[None] | None = None
        self._root: Path | None = Path(settings.hls_dir) if settings.hls_dir else None
        self._temp_root: Path | None = None
        self._ffmpeg: str | None = settings.ffmpeg or None
        stages.subscribe(self._on_hub)

    # -- queries ---------------------------------------------------------------------------------
    def in_room(self, room: str) -> list[Bridge]:
        return [b for b in self._bridges.values() if b.room == room]

    def all(self) -> list[Bridge]:
        return list(self._bridges.values())

    def get(self, room: str, bridge_id: str) -> Bridge:
        bridge = self._bridges.get(bridge_id)
        if bridge is None or bridge.room != room:
            raise NotFound("no such bridge")
        return bridge

    def hls(self, room: str) -> HlsOutput | None:
        return self._hls.get(room)

    @property
    def ffmpeg(self) -> str:
        if self._ffmpeg is None:
            self._ffmpeg = default_ffmpeg()
        return self._ffmpeg

    def hls_root(self) -> Path:
        if self._root is None:
            self._temp_root = self._root = Path(tempfile.mkdtemp(prefix="stagecast-hls-"))
        return self._root

    # -- commands --------------------------------------------------------------------------------
    async def create(self, room: str, kind: BridgeKind, url: str | None = None) -> Bridge:
        # the machinery (ffmpeg process, feed, LL-HLS packager) loads off the loop, once
        await asyncio.to_thread(importlib.import_module, f"{__package__}.bridge")
        from .bridge import Bridge

        stage = self._stages.get(room)
        if stage is None:
            raise NotFound(f"no room {room!r}")
        existing = self.in_room(room)
        if len(existing) >= self.settings.max_per_room:
            raise Conflict(f"room {room!r} already has {len(existing)} bridges")
        hls: HlsOutput | None = None
        if kind == "rtmp":
            url = check_rtmp_url(url)
            if any(b.url == url for b in existing):
                raise Conflict("this room is already pushed to that url")
        else:
            if url:
                raise Unprocessable("an HLS bridge takes no url: it is served at /hls/ROOM/")
            if room in self._hls:
                raise Conflict(f"room {room!r} already has an HLS bridge")
            url = ""
            hls = await self._new_hls(room)
        bridge = Bridge(secrets.token_urlsafe(9), room, kind, url, self.settings, self.ffmpeg, hls)
        self._bridges[bridge.id] = bridge
        if stage.persistent:
            self._rooms_seen[room] = stage
        bridge.start(self._stages.live_hub(room))
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_rooms(), name="bridges-rooms")
        log.info("bridge %s created: %s for room %s", bridge.id, kind, room)
        return bridge

    async def _new_hls(self, room: str) -> HlsOutput:
        from .hls_output import HlsOutput
        from .llhls import LlHlsPackager, target_duration_for

        root = self.hls_root()
        directory = root / room
        if directory.resolve().parent != root.resolve():  # rooms are checked; this stays so
            raise Unprocessable(f"room {room!r} cannot name an HLS directory")
        await asyncio.to_thread(shutil.rmtree, directory, True)  # nothing stale is served
        packager = LlHlsPackager(
            secrets.token_hex(8),
            part_target=self.settings.hls_part_duration,
            target_duration=target_duration_for(self.settings.keyframe_interval),
            window=self.settings.hls_window,
        )
        output = self._hls[room] = HlsOutput(directory, packager)
        return output

    async def delete(self, room: str, bridge_id: str) -> None:
        bridge = self.get(room, bridge_id)
        await self._remove(bridge)

    async def stop_room(self, room: str) -> None:
        """The room is closed: stop and forget its bridges."""
        await asyncio.gather(*(self._remove(b) for b in self.in_room(room)))
        self._rooms_seen.pop(room, None)

    async def _remove(self, bridge: Bridge) -> None:
        if self._bridges.pop(bridge.id, None) is None:
            return
        await bridge.stop()
        if bridge.hls is not None and self._hls.get(bridge.room) is bridge.hls:
            del self._hls[bridge.room]
            await bridge.hls.remove()
        log.info("bridge %s of room %s stopped", bridge.id, bridge.room)

    async def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.gather(*(self._remove(b) for b in self.all()))
        self._stages.unsubscribe(self._on_hub)
        if self._temp_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._temp_root, True)

    # -- room following --------------------------------------------------------------------------
    def _on_hub(self, room: str, hub: FanoutHub | None) -> None:
        for bridge in self.in_room(room):
            bridge.set_hub(hub)

    async def _watch_rooms(self) -> None:
        """Stop the bridges of a room the operator closed (an operator-created room that is no
        longer in the stage table). Rooms a WHIP push created come and go with their anchor:
        their bridges wait for it."""
        while True:
            await asyncio.sleep(self._poll)
            for room in {b.room for b in self._bridges.values()}:
                stage = self._stages.get(room)
                seen = self._rooms_seen.get(room)
                if stage is not None and stage.persistent:
                    self._rooms_seen[room] = stage
                elif seen is not None and stage is not seen:
                    log.info("room %s closed: stopping its bridges", room)
                    try:
                        await self.stop_room(room)
                    except Exception:
                        log.exception("stopping the bridges of room %s failed", room)
