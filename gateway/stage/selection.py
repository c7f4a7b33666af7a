"""Which hub a WHEP viewer gets: the program (default), one rendition of it
(``?rendition=360p``), one anchor's own stream (``?anchor=ID``, co-hosts pulling each other
with low delay, ``&rendition=`` one of its simulcast layers) or one anchor's mix-minus
(``?mixminus=ID``, everyone else's audio).

Simulcast layers are renditions too (``layer_names``): the top layer is the program (and the
first rendition's name), the next ones take the next rendition names, and layers beyond the
configured renditions are named by halving the last one (``360p`` -> ``180p``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.errors import NotFound
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.rtc.viewers import HubLookup

# (room, anchor id, requester's subject or None for a liveness probe) -> hub; may raise Forbidden
MixMinusLookup = Callable[[str, str, str | None], FanoutHub | None]
# (room, anchor id, rendition or None) -> that anchor's hub (of that simulcast layer)
AnchorLookup = Callable[[str, str, str | None], FanoutHub | None]


def layer_names(renditions: Sequence[str], count: int) -> list[str]:
    """The names of ``count`` layers, highest first: the configured rendition names, then
    each further one half the height of the one before (``NNNp``) or ``layerN``."""
    names = list(renditions[:count])
    while len(names) < count:
        last = names[-1] if names else ""
        height = last[:-1]
        name = f"{int(height) // 2}p" if last.endswith("p") and height.isdigit() else ""
        names.append(name if name and name not in names else f"layer{len(names)}")
    return names


def hub_selector(
    program: Callable[[str], FanoutHub | None],
    rendition: Callable[[str, str], FanoutHub | None],
    anchor: AnchorLookup,
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
            hub = anchor(room, key.anchor, key.rendition)
            if hub is None:
                what = f" with a layer {key.rendition!r}" if key.rendition is not None else ""
                raise NotFound(f"room {room!r} has no live anchor {key.anchor!r}{what}")
            return hub
        if key.rendition is not None:
            hub = rendition(room, key.rendition)
            if hub is None and key.rendition not in names:
                raise NotFound(f"no rendition {key.rendition!r}; there are {', '.join(names)}")
            return hub
        return program(room)

    return select
