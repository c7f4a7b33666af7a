"""tests/unit stays unit: a test here that binds or connects a socket or starts a process fails.

asyncio's own self-pipe (socket.socketpair) is allowed; anything that needs a port, a peer, Redis,
ffmpeg or a server belongs in tests/live.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

# Imported before the guard is armed: aiortc's first import looks for libraries with ctypes'
# find_library, which runs ldconfig in a subprocess.
import aiortc  # noqa: F401
import pytest


class NotAUnitTest(AssertionError):
    """A unit test reached for the network or a subprocess."""


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise NotAUnitTest(f"{what} in tests/unit: move this test to tests/live")

    return refuse


@pytest.fixture(autouse=True)
def _no_sockets_or_subprocesses(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "bind", _refuse("socket.bind"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("socket.connect_ex"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocess.Popen"))
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse("create_subprocess_exec"))
    monkeypatch.setattr(asyncio, "create_subprocess_shell", _refuse("create_subprocess_shell"))
    yield
