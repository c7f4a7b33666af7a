"""The name of one stream: a room's program, one of its renditions, one anchor's own stream or
one anchor's mix-minus. Its query-string form (``/whep/ROOM?rendition=360p``) is encoded and
decoded here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

QUERY_NAMES = ("rendition", "anchor", "mixminus")


@dataclass(frozen=True, slots=True)
class StreamKey:
    """``room`` alone is the room's program. ``rendition``: one rendition of the program;
    ``anchor``: that anchor's own stream (co-hosts pulling each other); ``mixminus``: everyone
    else's audio, mixed for that anchor. Values are kept as given (an empty one stays empty, so
    that a lookup refuses it as it refuses any unknown name)."""

    room: str
    rendition: str | None = None
    anchor: str | None = None
    mixminus: str | None = None

    @classmethod
    def from_query(cls, room: str, query: str | Mapping[str, str]) -> StreamKey:
        """The key of ``room`` selected by a query string (or its parsed mapping); other
        parameters (``access_token``, ...) are not part of the key."""
        params = dict(parse_qsl(query, keep_blank_values=True)) if isinstance(query, str) else query
        return cls(room, params.get("rendition"), params.get("anchor"), params.get("mixminus"))

    def query(self) -> str:
        """The selection as a query string, without ``?`` (empty for the program)."""
        values = (self.rendition, self.anchor, self.mixminus)
        return urlencode(
            [(n, v) for n, v in zip(QUERY_NAMES, values, strict=True) if v is not None]
        )

    def path(self, prefix: str = "/whep") -> str:
        """The URL path (and query) that asks a node for this stream."""
        query = self.query()
        return f"{prefix}/{quote(self.room, safe='')}" + (f"?{query}" if query else "")

    @property
    def id(self) -> str:
        """The stream's id in logs, metrics and the cluster view: ``room`` or ``room?query``."""
        query = self.query()
        return f"{self.room}?{query}" if query else self.room

    def __str__(self) -> str:
        return self.id
