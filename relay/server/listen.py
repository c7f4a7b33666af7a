"""The HTTP port's listening sockets, bound before the event loop starts.

uvicorn given ``host`` and ``port`` binds them with the loop's ``getaddrinfo``, which uvloop
runs in libuv's thread pool: four worker threads (and a malloc arena for the one that resolved)
kept for the life of a node that never resolves a name again (~0.9 MiB). Resolved here, in this
thread, the same way ``loop.create_server(host=...)`` does (every address the name has, IPv6
sockets IPv6-only, ``SO_REUSEADDR``), the node hands uvicorn the sockets and the pool never
starts unless something resolves a name later (a configured ICE host name, an outbound call)."""

from __future__ import annotations

import socket


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for ``host`` ("" or "0.0.0.0" and "::" as usual)
    and ``port``; raises OSError with every socket closed if one cannot be bound."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound
