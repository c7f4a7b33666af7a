"""Rooms (stages) of this node and the stream each one is putting out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from relay.media.hub import FanoutHub

from ..mixer.layout import LayoutSpec
from ..mixer.specs import AudioControl

log = logging.getLogger(__name__)

HubListener = Callable[[str, FanoutHub | None], None]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """Per-room settings an operator can set when creating a room."""

    private: bool = False  # audience needs a token even where anonymous pulls are allowed
    max_viewers: int | None = None  # on this node
    chat: str = "audience"  # who may chat in the room's channel (relay.messages.policy)
    record: bool = False  # record the program whenever the room goes live
    mode: str = "stage"  # "call": no mixing, the program passes the first anchor through


@dataclass(eq=False)
class Stage:
    """A room: its program hub exists while an anchor is live. Rooms created through the API
    persist; rooms created implicitly by a WHIP push go away when idle."""

    room: str
    config: RoomConfig = field(default_factory=RoomConfig)
    persistent: bool = False
    hub: FanoutHub | None = None
    anchor_ids: list[str] = field(default_factory=list)  # live anchor sessions, join order
    created_at: float = field(default_factory=time.time)
    renditions: dict[str, FanoutHub] = field(default_factory=dict)  # name -> hub, main first
    layout: LayoutSpec | None = None  # how the mixer draws the stage; None: the settings' grid
    audio: dict[str, AudioControl] = field(default_factory=dict)  # anchor id -> gain / mute

    @property
    def anchor_id(self) -> str | None:
        """The first live anchor (the one passed through when it is alone)."""
        return self.anchor_ids[0] if self.anchor_ids else None


class StageTable:
    """Room name -> Stage, owned by the app; the lookup the viewer side uses."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self._listeners: list[HubListener] = []

    def subscribe(self, listener: HubListener) -> None:
        """Call ``listener(room, hub)`` whenever a room's program hub appears (hub) or ends (None);
        bridges and recorders follow a room across anchor sessions this way."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: HubListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set_hub(self, room: str, hub: FanoutHub | None) -> None:
        stage = self.ensure(room) if hub is not None else self._stages.get(room)
        if stage is None:
            return
        stage.hub = hub
        for listener in list(self._listeners):
            try:
                listener(room, hub)
            except Exception:
                log.exception("stage listener failed for room %s", room)

    def get(self, room: str) -> Stage | None:
        return self._stages.get(room)

    def ensure(self, room: str) -> Stage:
        stage = self._stages.get(room)
        if stage is None:
            stage = self._stages[room] = Stage(room)
        return stage

    def create(self, room: str, config: RoomConfig) -> Stage:
        """Create (or adopt an implicit) room with operator settings."""
        stage = self.ensure(room)
        stage.config = config
        stage.persistent = True
        return stage

    def remove(self, room: str) -> None:
        self._stages.pop(room, None)

    def discard_if_idle(self, room: str) -> None:
        stage = self._stages.get(room)
        if stage is not None and not stage.persistent and stage.hub is None and not stage.anchor_id:
            del self._stages[room]

    def is_private(self, room: str) -> bool:
        stage = self._stages.get(room)
        return stage is not None and stage.config.private

    def chat_mode(self, room: str) -> str:
        stage = self._stages.get(room)
        return stage.config.chat if stage is not None else "audience"

    def max_viewers(self, room: str) -> int | None:
        stage = self._stages.get(room)
        return stage.config.max_viewers if stage is not None else None

    def live_hub(self, room: str) -> FanoutHub | None:
        stage = self._stages.get(room)
        return stage.hub if stage is not None else None

    def rendition_hub(self, room: str, rendition: str) -> FanoutHub | None:
        """A rendition's hub of the room's program (the main one under its own name too)."""
        stage = self._stages.get(room)
        if stage is None or stage.hub is None:
            return None
        return stage.renditions.get(rendition)

    def __iter__(self) -> Iterator[Stage]:
        return iter(list(self._stages.values()))

    def __len__(self) -> int:
        return len(self._stages)
