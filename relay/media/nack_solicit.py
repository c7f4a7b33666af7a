"""Making a viewer that asks for a hole once ask again (sans I/O).

aiortc's receiver (``rtcrtpreceiver.NackGenerator``, and the many bots, recorders and SDK apps
built on it) NACKs the packets it misses only when a NEW hole appears, then with the whole list
of those still missing; it never repeats a NACK on its own and sends no PLI. A lost NACK (or a
retransmission lost with its second copy) leaves the hole open until the next new hole: ~330 ms
at 2 % loss of a 720p stream's ~150 packets a second, seconds on a thin layer, up to the next
keyframe. Its jitter buffer releases frames in sequence order, so the picture stops there: a
freeze by Chromium's rule from 183 ms on at 30 fps. In the bed at the last merge (2 % loss,
quiet machine) such viewers froze 4.0 % of the time where Chromium, which repeats every ~100
ms, froze 0.6 %.

The gateway cannot see a lost NACK, but it can make the receiver send its list again: every
``EVERY`` seconds while the viewer asks for repairs, one sequence number is skipped in the next
frame and filled right after that frame's packets with a padding-only packet (the
previous frame's timestamp): the receiver sees a new hole at the frame's first packet, NACKs
its whole missing list, and the filler closes the hole a moment later (a padding-only packet adds
nothing to the frame it sits in; a NACK for it gets it again). Cost: a 13-byte packet down and
a NACK up every ``EVERY`` s, only while the viewer asked for a packet in the last
``ACTIVE_FOR`` s. Not for viewers seen repeating their NACKs (browsers), nor for those with
transport-cc (browsers again: their receivers repeat on their own).

Optionally (``lossy_every``; off by default: not shown to help in the loaded bed, BENCHMARKS.md,
a-loss4), while the viewer asks for ``FOLLOW_UP_LOSS`` (3 %) or more of its packets (its
retransmissions already go twice then) a hole is made every ``LOSSY_EVERY`` s, in every frame: at
5 % loss one NACK in twenty is lost, and a repair that waits up to 0.1 s for the next hole made
plus a round trip can end past the 183 ms of a freeze by Chromium's rule at 30 fps. In the bed
at 5 % loss + 40 ms RTT (loaded) the holes an aiortc viewer held open past 150 ms were mostly
ones it asked for again, 59-221 ms after the first NACK (``bench.netbed.holes``).
"""

from __future__ import annotations

from collections import deque

from relay.media.retransmit import FOLLOW_UP_LOSS

EVERY = 0.1
"""Seconds between two holes made: a lost NACK then costs about this plus a round trip, like a
browser's own repeat (unit simulation: holes open past 150 ms at 2 % loss 31 -> 1 in 12 min)."""
LOSSY_EVERY = 0.0
"""Seconds between two holes made, when turned on (``lossy_every``), while the viewer asks for
``FOLLOW_UP_LOSS`` or more of its packets: 0, every frame (unit simulation at 5 % loss, 40 ms
RTT: holes open past 150 ms 21 -> 0 in 12 min against ``EVERY``, for ~5 more NACK messages a
second). Not 0.03: a loaded mixer's frames come 20-45 ms apart, and a live viewer at 8 % loss
then got a hole in 55 % of them."""
ACTIVE_FOR = 5.0
"""Seconds after the viewer last asked for a packet that holes are still made (a lost NACK on a
thin layer may be the only sign of loss for seconds)."""
REMEMBERED = 64
"""Filler sequence numbers remembered (a NACK for one is answered with it again)."""


class NackSolicitor:
    """One viewer's holes made to make it NACK again: ``due`` per frame sent, ``made`` with the
    number and packet of the filler, ``split`` for each NACK, ``filler`` for each number it
    asks for."""

    def __init__(
        self, every: float = EVERY, active_for: float = ACTIVE_FOR, lossy_every: float = EVERY
    ) -> None:
        self.every = every
        self.lossy_every = lossy_every
        self.active_for = active_for
        self.made_count = 0  # holes made (fillers sent)
        self.solicited = 0  # NACKs that asked for a filler: the receiver answered a hole made
        self._asked = 0
        self._asked_at = float("-inf")
        self._last = float("-inf")  # when the last hole was made
        self._fillers: deque[tuple[int, bytes]] = deque(maxlen=REMEMBERED)

    def due(self, now: float, asked: int, asks_again: bool, loss: float = 0.0) -> bool:
        """Whether the frame sent now gets a hole made before it (``asked``: the packets the
        viewer asked for so far, fillers not counted; ``asks_again``: it repeats its NACKs on
        its own; ``loss``: the share of its packets it asked for lately)."""
        if asked != self._asked:
            self._asked, self._asked_at = asked, now
        if asks_again or now - self._asked_at > self.active_for:
            return False
        every = self.lossy_every if loss >= FOLLOW_UP_LOSS else self.every
        if now - self._last < every:
            return False
        self._last = now
        return True

    def made(self, sequence: int, packet: bytes) -> None:
        self.made_count += 1
        self._fillers.append((sequence, packet))

    def filler(self, sequence: int) -> bytes | None:
        """The filler packet that took ``sequence`` (None: not one of ours, or forgotten)."""
        return next((p for s, p in self._fillers if s == sequence), None)

    def split(self, sequences: list[int]) -> tuple[list[int], bool]:
        """A NACK's numbers without the fillers', and whether it asked for a filler (then it
        answered a hole made: its other numbers are not a repeat of the viewer's own)."""
        if not self._fillers:
            return sequences, False
        fillers = {s for s, _ in self._fillers}
        real = [s for s in sequences if s not in fillers]
        solicited = len(real) != len(sequences)
        if solicited:
            self.solicited += 1
        return real, solicited
