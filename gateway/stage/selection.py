"""Which hub a WHEP viewer gets: the program (default), one rendition of it
(``?rendition=360p``), one anchor's own stream (``?anchor=ID``, co-hosts pulling each other
with low delay) or one anchor's mix-minus (``?mixminus=ID``, everyone else's audio)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.errors import NotFound
from relay.http.whep import current_selection
from relay.media.hub import FanoutHub

HubLookup = Callable[[str], FanoutHub | None]
# (room, anchor id, requester's subject or None for a liveness probe) -> hub; may raise Forbidden
MixMinusLookup = Callable[[str, str, str | None], FanoutHub | None]


def hub_selector(
    program: HubLookup,
    rendition: Callable[[str, str], FanoutHub | None],
    anchor: Callable[[str, str], FanoutHub | None],
    rendition_names: Sequence[str],
    mixminus: MixMinusLookup | None = None,
) -> HubLookup:
    names = tuple(rendition_names)

    def select(room: str) -> FanoutHub | None:
        sel = current_selection()
        if sel.mixminus is not None:
            hub = mixminus(room, sel.mixminus, sel.subject) if mixminus is not None else None
            if hub is None:
                raise NotFound(f"room {room!r} has no mix-minus for anchor {sel.mixminus!r}")
            return hub
        if sel.anchor is not None:
            hub = anchor(room, sel.anchor)
            if hub is None:
                raise NotFound(f"room {room!r} has no live anchor {sel.anchor!r}")
            return hub
        if sel.rendition is not None:
            if sel.rendition not in names:
                raise NotFound(f"no rendition {sel.rendition!r}; there are {', '.join(names)}")
            return rendition(room, sel.rendition)
        return program(room)

    return select
