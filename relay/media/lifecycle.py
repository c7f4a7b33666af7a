"""Session timers as sans-I/O state machines (aioquic's ``handle_timer(now)`` / ``get_timer()``).

Plain synchronous objects that are told what happened (``connected``, ``media_seen``, ``end``)
and when (``now``), and say when they next need a look (``next_deadline``). An asyncio driver
(``relay.rtc.lifecycle``) sleeps until that deadline and calls ``handle_timer``; tests advance a
number instead of sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

NEVER_CONNECTED = "never connected"
MEDIA_TIMEOUT = "media timeout"


@dataclass(slots=True)
class SessionLifecycle:
    """One peer session (an anchor's or a viewer's): connecting, then connected, then ended.

    A session that has not connected ``connect_timeout`` s after ``created_at`` ends ("never
    connected": a viewer that never connects is reaped this way). With ``media_timeout``, a
    connected session ends when nothing arrived for that long ("media timeout"). The first end
    reason sticks, whoever gives it (a timer, the peer, an operator)."""

    created_at: float
    connect_timeout: float
    media_timeout: float | None = None  # None: media is not watched (viewers send, not receive)
    connected_at: float | None = None
    last_media_at: float | None = None
    ended: str | None = None  # the end reason, once ended

    def connected(self, now: float) -> bool:
        """The peer connected; True the first time only."""
        if self.connected_at is not None or self.ended is not None:
            return False
        self.connected_at = now
        return True

    def media_seen(self, at: float | None) -> None:
        """The latest time media arrived (None: none yet)."""
        if at is not None and (self.last_media_at is None or at > self.last_media_at):
            self.last_media_at = at

    def end(self, reason: str) -> bool:
        """End for ``reason`` unless already ended; True if this call ended it."""
        if self.ended is not None:
            return False
        self.ended = reason
        return True

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next be called; None: only an event can end it."""
        if self.ended is not None:
            return None
        if self.connected_at is None:
            return self.created_at + self.connect_timeout
        if self.media_timeout is None:
            return None
        return (self.last_media_at or self.connected_at) + self.media_timeout

    def handle_timer(self, now: float) -> str | None:
        """Fire what is due at ``now``; returns the end reason once ended."""
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            self.end(NEVER_CONNECTED if self.connected_at is None else MEDIA_TIMEOUT)
        return self.ended


@dataclass(slots=True)
class ReconnectGrace:
    """A room's wait for an anchor whose network dropped: viewers keep a frozen picture for
    ``period`` s; an anchor that comes back ``cancel``s it, else ``handle_timer`` says the
    stream is over (with the reason to give)."""

    period: float
    started_at: float | None = None
    reason: str = ""

    @property
    def running(self) -> bool:
        return self.started_at is not None

    def start(self, now: float, reason: str) -> None:
        self.started_at = now
        self.reason = reason

    def cancel(self) -> None:
        self.started_at = None

    def next_deadline(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.period

    def handle_timer(self, now: float) -> str | None:
        """The end-of-stream reason when the grace ran out at ``now`` (it then stops)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return None
        self.started_at = None
        return f"{self.reason}; no reconnect within {self.period:g} s"
