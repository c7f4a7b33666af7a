"""uvicorn's WebSocket protocol, loaded by the first WebSocket upgrade.

uvicorn resolves ``ws="auto"`` when it starts: it imports the ``websockets`` package and its
protocol (~40 modules, ~1.4 MiB resident) in every node, though only the room chat
(``/v1/rooms/{room}/messages/ws``) upgrades, and a node may never see one. uvicorn accepts a
callable in place of the class (it calls ``ws_protocol_class(config=..., server_state=...,
app_state=...)`` per upgrade), so ``lazy_ws_protocol`` hands it one that imports the real
class on the first call (~15-30 ms, once) and builds every connection's protocol from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def lazy_ws_protocol() -> Callable[..., asyncio.Protocol]:
    """A stand-in for ``uvicorn.protocols.websockets.auto.AutoWebSocketsProtocol``."""
    loaded: list[Callable[..., asyncio.Protocol]] = []

    def protocol(**kwargs: Any) -> asyncio.Protocol:
        if not loaded:
            from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

            if AutoWebSocketsProtocol is None:  # neither websockets nor wsproto installed
                raise RuntimeError("no WebSocket library: install uvicorn[standard]")
            loaded.append(AutoWebSocketsProtocol)
        return loaded[0](**kwargs)

    return protocol
