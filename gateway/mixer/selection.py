"""Which hub a WHEP viewer gets: the program (default), one rendition of it
(``?rendition=360p``), or one anchor's own stream (``?anchor=ID``, co-hosts pulling each other
with low delay)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.errors import NotFound
from relay.hub import FanoutHub
from relay.whep_http import current_selection

HubLookup = Callable[[str], FanoutHub | None]


def hub_selector(
    program: HubLookup,
    rendition: Callable[[str, str], FanoutHub | None],
    anchor: Callable[[str, str], FanoutHub | None],
    rendition_names: Sequence[str],
) -> HubLookup:
    names = tuple(rendition_names)

    def select(room: str) -> FanoutHub | None:
        sel = current_selection()
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
