"""Whose address a request is counted against: the TCP peer's, unless it is one of the node's
``trusted_proxies``. uvicorn on its own believes X-Forwarded-For from loopback, so any local
process (or a proxy that passes on what clients send) could name a fresh address per request
and get past every per-address limit. Run as the CLI runs it (``relay.server.main.run``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from gateway.launcher import free_port, stop_process, wait_healthy

LIMITS = {  # two session POSTs per address, then 429 for a long while
    "STAGECAST_LIMITS__SESSION_POSTS_PER_SECOND": "0.01",
    "STAGECAST_LIMITS__SESSION_POST_BURST": "2",
}


@contextlib.contextmanager
def serving(**env: str) -> Iterator[str]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--udp-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**clean, **LIMITS, **env},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        yield base
    finally:
        stop_process(proc)


def posts(base: str, forwarded_for: list[str]) -> list[int]:
    """A WHEP POST per X-Forwarded-For address (each from 127.0.0.1): the statuses."""
    with httpx.Client(base_url=base, timeout=10) as client:
        return [
            client.post(
                "/whep/room",
                content="v=0\r\n",
                headers={
                    "Content-Type": "application/sdp",
                    "X-Forwarded-For": address,
                    "X-Forwarded-Proto": "https",
                },
            ).status_code
            for address in forwarded_for
        ]


@pytest.mark.timeout(120)
def test_a_forwarded_for_header_is_ignored_unless_its_sender_is_a_trusted_proxy() -> None:
    spoofed = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    with serving() as base:
        # one client (127.0.0.1) whatever it claims: its third POST is over the limit
        got = posts(base, spoofed)
        assert 429 not in got[:2] and got[2] == 429, got
    with serving(STAGECAST_TRUSTED_PROXIES='["127.0.0.1"]') as base:
        # a proxy the node was told to trust speaks for three clients, one POST each...
        assert 429 not in posts(base, spoofed)
        # ... and one of them is limited on its own
        assert posts(base, ["198.51.100.7"] * 3)[2] == 429
