"""Which hub a WHEP viewer gets: the program (default), one rendition of it
(``?rendition=360p``), one anchor's own stream (``?anchor=ID``, co-hosts pulling each other
with low delay) or one anchor's mix-minus (``?mixminus=ID``, everyone else's audio)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.errors import NotFound
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.rtc.viewers import HubLookup

# (room, anchor id, requester's subject or None for a liveness probe) -> hub; may raise Forbidden
MixMinusLookup = Callable[[str, str, str | None], FanoutHub | None]


def hub_selector(
    program: Callable[[str], FanoutHub | None],
    rendition: Callable[[str, str], FanoutHub | None],
    anchor: Callable[[str, str], FanoutHub | None],
    rendition_names: Sequence[str],
    mixminus: MixMinusLookup | None = None,
) -> HubLookup:
    names = tuple(rendition_names)

    def select(key: StreamKey, subject: str | None) -> FanoutHub | None:
        room = key.room
        if key.mixminus is not None:
            hub = mixminus(room, key.mixminus, subject) if mixminus is not None else None
            if hub is None:
                raise NotFound(f"room {room!r} has no mix-minus for anchor {key.mixminus!r}")
            return hub
        if key.anchor is not None:
            hub = anchor(room, key.anchor)
            if hub is None:
                raise NotFound(f"room {room!r} has no live anchor {key.anchor!r}")
            return hub
        if key.rendition is not None:
            if key.rendition not in names:
                raise NotFound(f"no rendition {key.rendition!r}; there are {', '.join(names)}")
            return rendition(room, key.rendition)
        return program(room)

    return select
