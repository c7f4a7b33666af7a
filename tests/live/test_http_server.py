"""``HttpServer``: uvicorn's housekeeping tick once a second, and a signal still ends the server
at once (not at the next tick)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from uvicorn.config import Config

from gateway.launcher import free_port
from relay.server.http_server import HttpServer


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return


class Counted(HttpServer):
    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


@pytest.mark.timeout(30)
async def test_ticks_once_a_second_and_stops_at_once_on_a_signal() -> None:
    server = Counted(Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert server.started
    ticks = server.ticks
    await asyncio.sleep(2.5)
    assert server.ticks - ticks <= 4, f"{server.ticks - ticks} ticks in 2.5 s"  # uvicorn's: 25
    ticks = server.ticks
    while server.ticks == ticks:  # just after a tick: the next one is a second away  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
    server._captured_signals.clear()  # (or uvicorn raises it again in this process at the end)
    await asyncio.wait_for(task, 5)
    # shutdown itself waits 0.1 s for connections; the tick's 1 s wait is cut short
    assert time.monotonic() - t0 < 0.8
