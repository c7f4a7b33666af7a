"""Joins take turns: a flash crowd of viewers is queued and worked off at the node's own pace.

A viewer's join is ~6 ms of the event loop's one core in two phases: the answer (offer checks,
peer connection, SDP; ~3 ms in a few steps) and the connect (ICE checks, the DTLS handshake,
SRTP; ~3 ms spread over the client's round trips). Hundreds of POSTs arriving together would
each run their answer in the same turn of the loop, and then hundreds of handshakes would land
in the same turns: the viewers already watching would wait for all of them (freezes of a second
or more). Here at most ``concurrency`` joins are answering at once and at most
``max_connecting`` answered joins are still connecting; a new turn starts only when both have
room, so a turn of the loop carries a bounded amount of join work whatever the burst (eight
answers' steps of ~1 ms: a few ms). Fewer at once would not spare the loop more, only slow the
line: a turn's length is its steps times the loop's turn time, so on a busy loop two at once
took ~8 joins/s while the node sat near idle (bench.joins, 200 at once, load 25).

The others wait in line, in arrival order (another node's pull goes first: it takes load off
this one). A join is refused (503 + Retry-After) only when the line is so long that its
expected wait (the line's length over the rate turns have been starting at) exceeds
``max_wait``, or when it has waited ``give_up`` seconds (a WHEP client stops waiting for its
POST's answer after ~10-15 s: answering later is wasted work).

``JoinLine`` is the sans-I/O core (places, the line, the rate, the verdicts, with ``now``
passed in); ``JoinQueue`` drives it with futures and timers on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from relay.errors import ServiceUnavailable

DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_CONNECTING = 64
DEFAULT_MAX_WAIT = 8.0  # s a join may be expected to wait for its turn when it arrives
DEFAULT_GIVE_UP = 10.0  # s in line after which a join is answered 503 (its client gives up)
CONNECT_HOLD = 1.0  # s an answered join holds a connecting place at most (a client that
# never connects must not hold up the line until the connect timeout reaps it)
RECENT = 3.0  # s after a burst during which it still explains a busy loop (LoopLagMonitor's window)
FIRST_INTERVAL = 0.01  # s between turns assumed before any was measured (100 joins/s)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to a join arriving now: start at once, wait in line, or be refused."""

    start: bool
    refuse: bool = False
    expected_wait: float = 0.0


class JoinLine:
    """The sans-I/O bookkeeping of one node's joins. Places: ``answering`` (at most
    ``concurrency``) and ``connecting`` (at most ``max_connecting``); the line holds opaque
    tokens in order. The driver asks ``arrive`` what to do with a join, ``take``s a place for
    one that starts at once, ``enqueue``s one that waits, and after every change of places
    calls ``hand_out`` for the waiting tokens whose turn it is (then ``started`` for each)."""

    def __init__(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_wait: float = DEFAULT_MAX_WAIT,
        *,
        max_connecting: int = DEFAULT_MAX_CONNECTING,
        give_up: float = DEFAULT_GIVE_UP,
    ) -> None:
        if concurrency < 1 or max_connecting < 1 or max_wait <= 0 or give_up <= 0:
            raise ValueError("concurrency and max_connecting >= 1, max_wait and give_up > 0")
        self.concurrency = concurrency
        self.max_connecting = max_connecting
        self.max_wait = max_wait
        self.give_up = give_up
        self.answering = 0
        self.connecting = 0
        self.line: collections.deque[object] = collections.deque()
        self.interval = FIRST_INTERVAL  # s between two turns while joins wait (learned)
        self._last_start = -1e9
        self._line_since = 0.0  # when the line last became non-empty
        self.last_wait_end = -RECENT  # when a turn ended with joins waiting or having waited
        self.taken = 0  # turns taken, monotonic
        self.refused = 0  # joins refused: the line too long, or waited too long
        self.max_waiting = 0  # the longest line seen
        self.longest_wait = 0.0  # s, the longest a join waited for its turn

    def has_place(self) -> bool:
        return self.answering < self.concurrency and self.connecting < self.max_connecting

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds a join arriving now would wait for its turn, from the rate turns started
        at while joins waited (``ahead``: joins in front of it, default the whole line)."""
        if not self.line and self.has_place():
            return 0.0
        return ((len(self.line) if ahead is None else ahead) + 1) * self.interval

    def arrive(self, *, first: bool = False) -> Verdict:
        """A join arrives (``first``: it would go to the head of the line)."""
        if not self.line and self.has_place():
            return Verdict(start=True)
        wait = self.expected_wait(0 if first else None)
        if wait > self.max_wait:
            self.refused += 1
            return Verdict(start=False, refuse=True, expected_wait=wait)
        return Verdict(start=False, expected_wait=wait)

    def take(self, now: float) -> None:
        """A join that ``arrive`` let start at once takes its answering place."""
        self.answering += 1
        self.taken += 1
        self._last_start = now

    def enqueue(self, token: object, now: float, *, first: bool = False) -> None:
        if not self.line:
            self._line_since = now
        if first:
            self.line.appendleft(token)
        else:
            self.line.append(token)
        self.max_waiting = max(self.max_waiting, len(self.line))

    def withdraw(self, token: object) -> bool:
        """A waiting join goes away (cancelled, gave up); False if it is not in line (it was
        handed its place: the driver gives that back with ``give_back``)."""
        try:
            self.line.remove(token)
        except ValueError:
            return False
        return True

    def give_back(self) -> None:
        """A token from ``hand_out`` that will not start after all."""
        self.answering -= 1

    def hand_out(self) -> list[object]:
        """The waiting tokens whose turn it is now, in order (each already holds its place)."""
        out: list[object] = []
        while self.line and self.has_place():
            out.append(self.line.popleft())
            self.answering += 1
        return out

    def started(self, now: float, waited: float) -> None:
        """A token from ``hand_out`` begins its turn after ``waited`` s in line: the gap
        since the previous turn (or since the line formed) teaches the line's rate."""
        self.taken += 1
        self.longest_wait = max(self.longest_wait, waited)
        gap = min(now - max(self._last_start, self._line_since), self.max_wait)
        self.interval += 0.2 * (max(gap, 0.0) - self.interval)
        self._last_start = now
        if self.line:
            self._line_since = now

    def answered(self, now: float, *, connecting: bool, waited: bool) -> None:
        """A turn's answer is done and its place passes on; ``connecting``: the join now holds
        a connecting place until ``connected``."""
        self.answering -= 1
        if connecting:
            self.connecting += 1
        if waited or self.line:
            self.last_wait_end = now

    def connected(self) -> None:
        self.connecting -= 1

    def bursting(self, now: float) -> bool:
        """Joins are in line or being answered, or a join had to wait in line within the last
        few seconds: a busy loop is (at least partly) their doing, and they are taken in turns.
        A trickle of joins that never waits does not count (it would switch the busy-loop
        guard off for good)."""
        return self.answering > 0 or bool(self.line) or now - self.last_wait_end < RECENT


class JoinTicket:
    """One join's turn: ``connecting()`` once its answer is out keeps a connecting place until
    the returned release is called (connected, or gone) or ``hold`` s pass."""

    def __init__(self, queue: JoinQueue, waited: float | None) -> None:
        self.queue = queue
        self.waited = waited
        self._connecting = False

    def connecting(self, hold: float = CONNECT_HOLD) -> Callable[[], None]:
        self._connecting = True
        queue = self.queue
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                timer.cancel()
                queue._line.connected()
                queue._wake()

        timer = asyncio.get_running_loop().call_later(hold, release)
        return release


class JoinQueue:
    """The line of joins of one node (one event loop)."""

    def __init__(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_wait: float = DEFAULT_MAX_WAIT,
        *,
        max_connecting: int = DEFAULT_MAX_CONNECTING,
        give_up: float = DEFAULT_GIVE_UP,
        retry_after: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._line = JoinLine(concurrency, max_wait, max_connecting=max_connecting, give_up=give_up)
        self.retry_after = retry_after
        self._clock = clock

    # figures
    @property
    def concurrency(self) -> int:
        return self._line.concurrency

    @property
    def max_wait(self) -> float:
        return self._line.max_wait

    @property
    def give_up(self) -> float:
        return self._line.give_up

    @property
    def waiting(self) -> int:
        return len(self._line.line)

    @property
    def answering(self) -> int:
        return self._line.answering

    @property
    def connecting(self) -> int:
        return self._line.connecting

    @property
    def taken(self) -> int:
        return self._line.taken

    @property
    def refused(self) -> int:
        return self._line.refused

    @property
    def max_waiting(self) -> int:
        return self._line.max_waiting

    @property
    def longest_wait(self) -> float:
        return self._line.longest_wait

    def expected_wait(self) -> float:
        return self._line.expected_wait()

    def bursting(self, now: float | None = None) -> bool:
        return self._line.bursting(self._clock() if now is None else now)

    def _refuse(self, why: str) -> ServiceUnavailable:
        return ServiceUnavailable(why, retry_after=self.retry_after)

    def _wake(self) -> None:
        for token in self._line.hand_out():
            assert isinstance(token, asyncio.Future)
            if token.done():  # (cannot happen: a waiter leaves the line before it is cancelled)
                self._line.give_back()
            else:
                token.set_result(None)

    @contextlib.asynccontextmanager
    async def turn(self, *, first: bool = False) -> AsyncIterator[JoinTicket]:
        """Wait for this join's turn (ServiceUnavailable when the line is too long or the
        wait reaches ``give_up``), then hold an answering place until the block ends; the
        ticket's ``connecting()`` keeps a connecting place after it. ``first``: go to the head
        of the line (another node's pull)."""
        line = self._line
        verdict = line.arrive(first=first)
        if verdict.refuse:
            raise self._refuse("this node is taking a burst of viewers; try again shortly")
        waited: float | None = None
        if verdict.start:
            line.take(self._clock())
        else:
            arrived = self._clock()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            line.enqueue(waiter, arrived, first=first)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), line.give_up)
            except BaseException as exc:
                if not line.withdraw(waiter):  # handed its place just now: pass it on
                    line.give_back()
                    self._wake()
                waiter.cancel()
                if isinstance(exc, TimeoutError):
                    line.refused += 1
                    raise self._refuse(
                        "this node is taking a burst of viewers and could not answer in time; "
                        "try again shortly"
                    ) from None
                raise
            now = self._clock()
            waited = now - arrived
            line.started(now, waited)
        ticket = JoinTicket(self, waited)
        try:
            yield ticket
        finally:
            line.answered(self._clock(), connecting=ticket._connecting, waited=waited is not None)
            self._wake()
