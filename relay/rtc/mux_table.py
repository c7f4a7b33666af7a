"""Which session a datagram on the node's shared UDP port belongs to (sans-I/O).

A session is known by its local ICE ufrag until its peer's first authenticated Binding request
arrives, then also by that request's source address (RFC 8445 §2.5: the node is ICE-lite, so
its peer's checks are the only way it learns addresses). STUN goes by the USERNAME's local
ufrag, always, so two sessions behind one remote address stay apart; everything else (DTLS,
SRTP/SRTCP) goes by the source address, which the nominating request (USE-CANDIDATE) moves.
Unknown ufrags, wrong MESSAGE-INTEGRITY, non-requests and unknown addresses are dropped:
nothing is answered, nothing is kept.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aioice import stun

T = TypeVar("T")
Addr = tuple[str, int]

MAX_ADDRESSES = 8  # remote addresses a session may be known by (its peer's candidates)
COOKIE = stun.COOKIE.to_bytes(4, "big")


@dataclass(eq=False, slots=True)
class _Entry(Generic[T]):
    ufrag: str
    key: bytes  # the local ICE password: MESSAGE-INTEGRITY's key
    target: T
    addresses: OrderedDict[Addr, None] = field(default_factory=OrderedDict)


def is_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: STUN starts with 0..3 and carries the magic cookie."""
    return len(data) >= stun.HEADER_LENGTH and data[0] < 4 and data[4:8] == COOKIE


class MuxTable(Generic[T]):
    def __init__(self) -> None:
        self._by_ufrag: dict[str, _Entry[T]] = {}
        self._by_addr: dict[Addr, _Entry[T]] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_ufrag)

    def unused_ufrag(self) -> str:
        """A ufrag no session on this port has (aioice's own are 4 characters: with a thousand
        sessions two would share one ~3 % of the time)."""
        while True:
            ufrag = secrets.token_hex(6)
            if ufrag not in self._by_ufrag:
                return ufrag

    def add(self, ufrag: str, password: str, target: T) -> None:
        if ufrag in self._by_ufrag:
            raise ValueError(f"ICE ufrag {ufrag!r} is taken on this port")
        self._by_ufrag[ufrag] = _Entry(ufrag, password.encode(), target)

    def remove(self, ufrag: str) -> None:
        entry = self._by_ufrag.pop(ufrag, None)
        if entry is None:
            return
        for addr in entry.addresses:
            if self._by_addr.get(addr) is entry:
                del self._by_addr[addr]

    def targets(self) -> list[T]:
        return [entry.target for entry in self._by_ufrag.values()]

    def addresses(self, ufrag: str) -> list[Addr]:
        entry = self._by_ufrag.get(ufrag)
        return list(entry.addresses) if entry is not None else []

    def route(self, data: bytes, addr: Addr) -> T | None:
        """The session ``data`` from ``addr`` is for, or None (dropped)."""
        entry = self._authenticated(data, addr) if is_stun(data) else self._by_addr.get(addr)
        if entry is None:
            self.dropped += 1
            return None
        return entry.target

    def _authenticated(self, data: bytes, addr: Addr) -> _Entry[T] | None:
        try:
            message = stun.parse_message(data)
        except Exception:  # any malformed STUN is dropped, whatever the parser says
            return None
        if (
            message.message_class != stun.Class.REQUEST
            or message.message_method != stun.Method.BINDING
        ):
            return None
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            return None
        entry = self._by_ufrag.get(username.partition(":")[0])
        if entry is None or not message.check_message_integrity(entry.key):
            return None
        nominating = "USE-CANDIDATE" in message.attributes
        if nominating or addr not in self._by_addr:
            self._bind(entry, addr)
        return entry

    def _bind(self, entry: _Entry[T], addr: Addr) -> None:
        previous = self._by_addr.get(addr)
        if previous is not None and previous is not entry:
            previous.addresses.pop(addr, None)
        self._by_addr[addr] = entry
        entry.addresses[addr] = None
        entry.addresses.move_to_end(addr)
        while len(entry.addresses) > MAX_ADDRESSES:
            old, _ = entry.addresses.popitem(last=False)
            if self._by_addr.get(old) is entry:
                del self._by_addr[old]
