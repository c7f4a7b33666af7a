"""uvicorn's Server with its housekeeping tick once a second instead of ten times.

uvicorn wakes its loop every 0.1 s to see whether a signal asked it to stop (and every tenth
time to refresh the Date header and check the request limit): ten wake-ups a second of a node
with nothing to do, each costing it more than the check itself. Here the tick is a second (the
Date header has a second's resolution; the request limit is off) and a signal ends the wait at
once, so shutdown is as prompt as before."""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

from uvicorn.server import Server

from relay.ops.timer_grid import next_tick

TICK = 1.0  # s


class HttpServer(Server):
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick's once-a-second work at every tick
            with contextlib.suppress(TimeoutError):
                # on the grid of the node's other timers: woken with them (relay.ops.timer_grid)
                async with asyncio.timeout_at(next_tick(self._loop.time(), TICK)):
                    await self._wake.wait()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)
