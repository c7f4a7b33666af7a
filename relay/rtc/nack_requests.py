"""NACKs to a publisher, per video SSRC, from relay.media.nack_tracker: a missing packet is
asked for when its gap appears (in aiortc's receive path, as aiortc did) and again on a loop
timer until it arrives, runs out of tries or can no longer be played.

aiortc's own generator asks once per gap (relay/media/nack_tracker.py says why that loses
frames); this one replaces it on the receiver (``install_nack_requests``). The timer runs only
while something is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiortc import RTCRtpReceiver

from relay.media.nack_tracker import NackPolicy, NackStats, NackTracker
from relay.media.repair_wait import RepairWait
from relay.rtc.adapter import install_nack_requests, send_nack

log = logging.getLogger(__name__)


class NackRequests:
    """The NACKs of one video receiver (every SSRC it gets: simulcast layers too)."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        policy: NackPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_ssrcs: int = 8,
        repair: RepairWait | None = None,
    ) -> None:
        """``repair``: fed every SSRC's repair times; its wait is their budget."""
        self._receiver = receiver
        self._repair = repair
        self._policy = policy
        self._clock = clock
        self._max_ssrcs = max_ssrcs
        self._trackers: dict[int, NackTracker] = {}
        self._gone = NackStats()  # of SSRCs no longer tracked
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.closed = False
        self.errors = 0
        install_nack_requests(receiver, self._on_packet, self._trackers)

    def _on_packet(self, ssrc: int, sequence_number: int) -> list[int]:
        """In aiortc's receive path: what to NACK at once. Never raises."""
        try:
            tracker = self._trackers.get(ssrc)
            if tracker is None:
                if len(self._trackers) >= self._max_ssrcs:  # SSRCs a publisher no longer uses
                    _add(self._gone, self._trackers.pop(next(iter(self._trackers))).stats)
                tracker = self._trackers[ssrc] = NackTracker(self._policy, repair=self._repair)
            lost = tracker.packet(sequence_number, self._clock())
            # a new gap may be due before the armed timer; anything else waits for it (looking
            # at every missing packet on every packet cost thousands of steps under heavy loss)
            if tracker.pending and (lost or self._timer is None):
                self._schedule()
            return lost
        except Exception:
            self._failed()
            return []

    def played(self, ssrc: int, next_sequence: int | None) -> None:
        """The frame assembler of ``ssrc`` waits for ``next_sequence`` now."""
        tracker = self._trackers.get(ssrc)
        if tracker is not None and next_sequence is not None:
            tracker.played(next_sequence)

    def next_deadline(self) -> float | None:
        """When a NACK is next due (None: nothing is missing)."""
        deadlines = [d for t in self._trackers.values() if (d := t.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def _schedule(self) -> None:
        deadline = self.next_deadline()
        if self.closed or deadline is None:
            return
        if self._timer is not None:
            assert self._timer_at is not None
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        delay = max(0.0, deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        transport = self._receiver.transport
        if transport is None or transport.state in ("closed", "failed"):
            self.close()
            return
        try:
            now = self._clock()
            for ssrc, tracker in self._trackers.items():
                lost = tracker.due(now)
                if lost:
                    task = send_nack(self._receiver, ssrc, lost)
                    self._sending.add(task)  # referenced until done
                    task.add_done_callback(self._sending.discard)
            self._schedule()
        except Exception:
            self._failed()

    def _failed(self) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.exception("NACK bookkeeping failed (%d so far)", self.errors)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    @property
    def stats(self) -> NackStats:
        total = NackStats()
        _add(total, self._gone)
        for tracker in self._trackers.values():
            _add(total, tracker.stats)
        return total


def _add(total: NackStats, more: NackStats) -> None:
    total.missing += more.missing
    total.nacked += more.nacked
    total.renacked += more.renacked
    total.recovered += more.recovered
    total.recovered_after_renack += more.recovered_after_renack
    total.expired += more.expired
    total.late += more.late
