"""The guard in tests/unit/conftest.py refuses what a unit test must not do."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from tests.unit.conftest import NotAUnitTest


def test_binding_connecting_and_spawning_are_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(NotAUnitTest):
            sock.bind(("127.0.0.1", 0))
        with pytest.raises(NotAUnitTest):
            sock.connect(("127.0.0.1", 9))
    with pytest.raises(NotAUnitTest):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_asyncio_still_runs_but_cannot_open_an_endpoint() -> None:
    await asyncio.sleep(0)  # the loop's self-pipe (socketpair) is allowed
    loop = asyncio.get_running_loop()
    with pytest.raises(NotAUnitTest):
        await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
