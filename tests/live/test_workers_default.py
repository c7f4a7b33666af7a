"""How many processes a relay starts when not told (relay.server.workers.default_workers_here):
it probes the media ports above its own, so it binds sockets (a live test)."""

from __future__ import annotations

import socket

from relay.server.settings import NodeSettings
from relay.server.workers import default_workers_here


def test_the_default_process_count_is_what_the_node_can_run_unasked() -> None:
    """One per core, but one with TLS or without a fixed port, and no more than the free media
    ports above the node's own (a relay that opened one port before this default, a neighbour
    on the next port): review finding 6."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        base = NodeSettings(port=18080, webrtc={"udp_port": taken - 2, "tcp_port": 0})
        count, why = default_workers_here(4, base)
        assert count == 2 and why is not None and str(taken) in why
    assert default_workers_here(1, base) == (1, None)
    tls = NodeSettings(port=18080, tls_certfile="/x.pem", tls_keyfile="/x.key")
    assert default_workers_here(4, tls)[0] == 1
    free = NodeSettings(port=18080, webrtc={"udp_port": 0, "tcp_port": 0})
    assert default_workers_here(3, free) == (3, None)
