"""An anchor's own hub: co-hosts pull it directly (``/whep/{room}?anchor={id}``) and the stage's
director taps its frames (passthrough into the program, or into the mixer)."""

from __future__ import annotations

from collections.abc import Callable

from relay.media.frames import EncodedFrame, MediaKind
from relay.media.hub import FanoutHub

FrameSink = Callable[[EncodedFrame], None]
MuteListener = Callable[[MediaKind, bool], None]


class AnchorHub(FanoutHub):
    """A ``FanoutHub`` whose published frames also go to one ``sink`` (set by the director),
    and whose mute changes are reported to ``on_mute``."""

    sink: FrameSink | None = None
    on_mute: MuteListener | None = None
    # a new source (a simulcast output switched layers): what ``sink`` feeds must rebase too
    on_source: Callable[[], None] | None = None

    def attach_source(self, requester: Callable[[], None]) -> None:
        switched = self.sources > 0
        super().attach_source(requester)
        if switched and self.on_source is not None:
            self.on_source()

    def publish(self, frame: EncodedFrame) -> None:
        super().publish(frame)
        sink = self.sink
        if sink is not None and not self.closed.is_set():
            sink(frame)

    def set_muted(self, kind: MediaKind, muted: bool) -> None:
        super().set_muted(kind, muted)
        if self.on_mute is not None:
            self.on_mute(kind, muted)
