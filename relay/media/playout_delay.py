"""A minimum playout delay for a viewer that needs repairs (sans I/O): the playout-delay RTP
header extension (http://www.webrtc.org/experiments/rtp-hdrext/playout-delay).

A browser plays a frame at its expected arrival plus its target delay (libwebrtc's VCMTiming:
``max(min playout delay, jitter delay + decode + render)``, about 30-60 ms on a clean link). A
frame that waited for a retransmission arrives one repair round late (the hole seen at the next
packet, a NACK's round trip, and here a retransmission's second copy ``FOLLOW_UP_AFTER`` later):
past its render time it is shown late and the picture stalls, a freeze by Chromium's rule when
it is more than 150 ms past the frame interval. libwebrtc keeps repaired frames out of its
jitter estimate, so its buffer never grows for them by itself. A minimum of about one repair
round (``repair_round``) lets the frame complete before its render time: the viewer sees no
stall, and pays that much glass-to-glass, only while it asks for repairs.

libwebrtc takes the extension from each complete frame that carries it and keeps it until
another says otherwise (VideoReceiveStream2::OnCompleteFrame; frames without it change
nothing). Its own sender puts it on every keyframe and on frames after a change until one
likely to be delivered; we put it on every frame while it is in effect (4 bytes a packet) and
for ``RELEASE_FOR`` after it ends, with ``RELEASE`` (not 0/0 nor 0/x: a zero minimum with a
maximum switches libwebrtc to its low-latency renderer or its composition-delay path), so a
lost frame cannot leave a viewer with a stale delay. On a clean link nothing is sent.
Values are 12 bits each in units of 10 ms (min, then max).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from relay.media.retransmit import FOLLOW_UP_AFTER, RANDOM_LOSS

PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
UNIT_MS = 10
MAX_UNITS = 0xFFF
DEFAULT_MAX_MS = 10_000
"""libwebrtc's own maximum playout delay (VCMTiming): what every value here carries as max."""
RELEASE = (UNIT_MS, DEFAULT_MAX_MS)
"""The value that gives a viewer its own delay back: one unit as minimum (below any real
target delay: render delay alone is 10 ms), libwebrtc's default maximum."""
RELEASE_FOR = 1.0
"""Seconds ``RELEASE`` is sent after the delay ends (every frame)."""
FRAME_INTERVAL = 1 / 30
"""A hole in a frame's last packet is seen only with the next frame's first."""
MARGIN = 0.02
"""Seconds of scheduling slack on top of the repair round (the receiver's decode and render
time come out of the minimum, libwebrtc's 10 ms render delay among them)."""
STEP_MS = 20
"""Delays are rounded up to this: few values, so few template variants per frame."""
WINDOW = 2.0
"""Seconds over which the share of packets a viewer asks for again is counted."""
LOWER_AFTER = 5.0
"""Seconds a smaller delay must be enough before the delay goes down to it."""
LOOK_EVERY = 0.5
"""Seconds between two looks at the viewer's counters."""
RAMP_MS = 40
"""Most the delay in effect moves per look (the picture holds this much longer, once)."""


def encode(min_ms: int, max_ms: int) -> bytes:
    """The extension's 3 bytes: 12-bit minimum and maximum, in units of 10 ms (rounded up)."""
    lo = min(MAX_UNITS, max(0, math.ceil(min_ms / UNIT_MS)))
    hi = min(MAX_UNITS, max(lo, math.ceil(max_ms / UNIT_MS)))
    return bytes(((lo >> 4) & 0xFF, ((lo & 0x0F) << 4) | (hi >> 8), hi & 0xFF))


def decode(value: bytes) -> tuple[int, int]:
    """(min ms, max ms) of an extension value."""
    if len(value) != 3:
        raise ValueError("a playout delay is 3 bytes")
    lo = (value[0] << 4) | (value[1] >> 4)
    hi = ((value[1] & 0x0F) << 8) | value[2]
    return lo * UNIT_MS, hi * UNIT_MS


def repair_round(rtt: float | None) -> float:
    """Seconds from a packet's expected arrival to its repair's: the hole seen (up to a frame
    interval later), the NACK's round trip, the second copy of the retransmission."""
    return (rtt or 0.0) + FRAME_INTERVAL + FOLLOW_UP_AFTER + MARGIN


@dataclass(frozen=True, slots=True)
class PlayoutDelayLimits:
    enabled: bool = False
    """Negotiate the extension with viewers that offer it (Chromium) and use it on lossy ones
    (off by default: ``media.viewer_playout_delay``)."""
    max_ms: int = 200
    """The largest minimum given (glass-to-glass grows by up to this, issue 17: p95 <= 250 ms
    at 5 % loss + 40 ms RTT)."""
    fixed_ms: int = 0
    """A minimum for every viewer that negotiated it, lossy or not (0: by loss, ``auto``)."""
    on_share: float = 0.005
    """Share of its packets a viewer must ask for again (over ``WINDOW``) to get a delay (and
    at most ``RANDOM_LOSS``: more is a link the stream overruns)."""
    off_after: float = 10.0
    """Seconds without that much loss before the delay is released."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_ms <= MAX_UNITS * UNIT_MS or not 0 <= self.fixed_ms <= self.max_ms:
            raise ValueError("0 <= fixed_ms <= max_ms <= 40950")
        if not 0 < self.on_share < 1 or self.off_after <= 0:
            raise ValueError("0 < on_share < 1 and off_after > 0")


class PlayoutDelayPolicy:
    """One viewer's minimum playout delay: ``update`` with its counters (each frame is fine:
    it looks every half second), ``value`` for the extension the next frame carries.

    libwebrtc applies a new minimum at once (the render time is its current delay clamped to
    the minimum): a jump from its own ~40 ms to 140 ms would hold the picture 100 ms more for
    one frame, a freeze by Chromium's rule at 150 ms. So the delay in effect moves towards
    the one wanted by at most ``RAMP_MS`` per look (a 40 ms hiccup each, no freeze)."""

    def __init__(self, limits: PlayoutDelayLimits | None = None) -> None:
        self.limits = limits or PlayoutDelayLimits()
        fixed = self.limits.fixed_ms or None
        self.delay_ms: int | None = fixed  # the minimum in effect (sent)
        self.target_ms: int | None = fixed  # the minimum wanted (one repair round)
        self.share = 0.0  # packets asked for again / packets sent, over the last WINDOW
        self.changes = 0
        self.next_at = float("-inf")  # when ``update`` looks again
        self._samples: deque[tuple[float, int, int]] = deque()
        self._lossy_at = float("-inf")
        self._lower_since: float | None = None
        self._release_until = float("-inf")
        self._value: bytes | None = encode(fixed, DEFAULT_MAX_MS) if fixed else None

    def update(self, now: float, asked: int, sent: int, rtt: float | None) -> None:
        """``asked``/``sent``: the viewer's packets asked for again and media packets sent so
        far (cumulative); ``rtt``: its round trip in seconds (None while unknown)."""
        if now < self.next_at or self.limits.fixed_ms:
            return
        self.next_at = now + LOOK_EVERY
        samples = self._samples
        samples.append((now, asked, sent))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW:
            samples.popleft()
        _, a0, s0 = samples[0]
        if sent - s0 >= 30:
            self.share = max(0.0, (asked - a0) / (sent - s0))
        # random loss a repair can hide; over RANDOM_LOSS the stream overruns the link, and
        # waiting longer for repairs that starve it helps nothing
        if self.limits.on_share <= self.share <= RANDOM_LOSS and sent - s0 >= 30:
            self._lossy_at = now
            round_ms = repair_round(rtt) * 1000
            self._want(min(self.limits.max_ms, STEP_MS * math.ceil(round_ms / STEP_MS)), now)
        elif self.target_ms is not None and now - self._lossy_at >= self.limits.off_after:
            self._want(None, now)
        self._ramp(now)

    def _want(self, want: int | None, now: float) -> None:
        current = self.target_ms
        if want is not None and current is not None and want < current:
            if self._lower_since is None:
                self._lower_since = now
            if now - self._lower_since < LOWER_AFTER:
                return
        self._lower_since = None
        self.target_ms = want

    def _ramp(self, now: float) -> None:
        current, target = self.delay_ms, self.target_ms
        if current is None and target is None:
            return
        goal = target or 0
        have = current or 0
        step = max(-RAMP_MS, min(RAMP_MS, goal - have))
        if target is None and have + step <= 0:  # down to nothing: libwebrtc's own delay back
            self.delay_ms = None
            self._release_until = now + RELEASE_FOR
            self._value = encode(*RELEASE)
            self.changes += 1
            return
        if step:
            self.delay_ms = have + step
            self._value = encode(have + step, DEFAULT_MAX_MS)
            self.changes += 1

    def value(self, now: float) -> bytes | None:
        """The extension's value for the frame sent now (None: the frame carries none)."""
        if self.delay_ms is None and now >= self._release_until:
            return None
        return self._value
