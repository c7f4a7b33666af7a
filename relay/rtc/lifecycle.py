"""The thin asyncio driver of a peer session's timers (``relay.media.lifecycle``), shared by
anchor (WHIP) and viewer (WHEP) sessions: the peer connection's state changes and outside
events feed the state machine, one task sleeps until its next deadline, and the session's
teardown runs exactly once when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from aiortc import RTCPeerConnection

from relay.media.lifecycle import SessionLifecycle

from .peer import CLOSED_STATES

Clock = Callable[[], float]


class PeerLifecycle:
    """One session's lifecycle on the event loop. ``start`` wires it to the peer connection
    and runs it; ``end`` (any time, from anywhere on the loop) ends it; ``stop`` ends it and
    waits for the teardown."""

    def __init__(
        self, pc: RTCPeerConnection, timers: SessionLifecycle, *, clock: Clock = time.monotonic
    ) -> None:
        self.pc = pc
        self.timers = timers
        self._clock = clock
        self._wake = asyncio.Event()
        self._on_connected: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def connected_at(self) -> float | None:
        return self.timers.connected_at

    @property
    def ended(self) -> str | None:
        return self.timers.ended

    def start(
        self,
        name: str,
        teardown: Callable[[], Awaitable[None]],
        *,
        on_connected: Callable[[], None] | None = None,
        media: Callable[[], float | None] | None = None,
        ends: Sequence[tuple[asyncio.Event, str]] = (),
        on_cancel: str = "shutdown",
    ) -> None:
        """Run until ended, then ``teardown``. ``media`` reads when media last arrived (polled
        at each deadline, not per packet); each of ``ends`` ends the session once set, with
        its reason; a cancelled task ends with ``on_cancel``."""
        self._on_connected = on_connected
        self.pc.on("connectionstatechange", self._on_state)
        self.task = asyncio.create_task(self._run(teardown, media, ends, on_cancel), name=name)

    def end(self, reason: str) -> None:
        self.timers.end(reason)
        self._wake.set()

    async def stop(self, reason: str) -> None:
        """End for ``reason`` and wait for the teardown (unless called from the task itself)."""
        self.end(reason)
        task = self.task
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if self.timers.connected(self._clock()) and self._on_connected is not None:
                self._on_connected()
            self._wake.set()
        elif state in CLOSED_STATES:
            self.end(f"connection {state}")

    async def _end_when(self, event: asyncio.Event, reason: str) -> None:
        await event.wait()
        self.end(reason)

    async def _run(
        self,
        teardown: Callable[[], Awaitable[None]],
        media: Callable[[], float | None] | None,
        ends: Sequence[tuple[asyncio.Event, str]],
        on_cancel: str,
    ) -> None:
        watchers = [asyncio.ensure_future(self._end_when(ev, why)) for ev, why in ends]
        timers = self.timers
        try:
            while timers.ended is None:
                deadline = timers.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                if media is not None:
                    timers.media_seen(media())
                timers.handle_timer(self._clock())
        except asyncio.CancelledError:
            timers.end(on_cancel)
        finally:
            for w in watchers:
                w.cancel()
            await teardown()


class DeadlineTimer:
    """The driver of a sans-I/O object with ``next_deadline()`` / ``handle_timer(now)``: one
    loop timer at its next deadline. Call ``rearm`` after anything that may have moved it."""

    def __init__(
        self,
        next_deadline: Callable[[], float | None],
        handle_timer: Callable[[float], object],
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._next_deadline = next_deadline
        self._handle_timer = handle_timer
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None

    def rearm(self) -> None:
        self.cancel()
        deadline = self._next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._handle_timer(self._clock())
        self.rearm()
