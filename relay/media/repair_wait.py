"""How long a hole in a publisher's video may hold its stream: the wait for a NACKed packet's
retransmission before the frame it broke is skipped and a keyframe asked for.

A fixed 0.1 s (``reassembly_wait``) suits a short clean link, but behind a thin uplink a
retransmission crosses the publisher's full bottleneck queue (a packet is lost there exactly
when that queue is full) and its sender's pacer: it comes after 0.1 s, so the frame is skipped
and a keyframe asked for, a large frame that fills the same queue again (behind 1 Mbit/s the
gateway recovered 0-16 of 9-168 NACKed packets per run). Here the wait follows the repair times
measured on this leg, from the gap to the missing packet's arrival, retransmissions that come
after their frame was given up included (so a wait that is too short corrects itself): room
for one lost retransmission asked for again (twice the smoothed time) plus four deviations
(TCP's retransmission timeout, RFC 6298) plus a margin, never below
``floor`` (the configured wait) and never above ``cap`` (the latency a hole may add to every
viewer behind it); back to ``floor`` while most repairs come after ``cap`` anyway (a congested
uplink where the sender's pacer holds retransmissions for most of a second: waiting then only
delays the keyframe the skip asks for). Frames with no hole are released on their marker as
before: a clean leg, with nothing to repair, pays nothing, and a leg whose repairs come quickly
keeps the floor.

Sans-I/O: ``sample`` takes a measured repair time, ``wait`` is read by the frame assembler and
the NACK tracker (``relay.media.reassembly``, ``relay.media.nack_tracker``) for every hole.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RepairWaitPolicy:
    floor: float = 0.1
    """The wait before any repair was measured, and the least (seconds)."""
    cap: float = 0.3
    """The most a hole may hold the stream (seconds): the latency bound it adds to viewers."""
    margin: float = 0.01
    """Added to the estimate (seconds)."""
    deviations: float = 4.0
    """Mean deviations of the repair time added to its smoothed value (RFC 6298's K)."""
    worth: float = 0.35
    """The least share of repairs that come within ``cap`` (smoothed) for a hole to be waited
    for beyond ``floor``: past ``cap`` the wait is lost time and the keyframe asked for at the
    skip comes that much later. About when a wait of ``cap`` (0.3 s) costs less on average than
    the keyframe it may spare (a round trip, the encoder and a large frame through the same
    thin uplink, ~0.5 s)."""
    repeats: int = 1
    """Lost retransmissions in a row the wait allows for (each asked again after a repair
    time, so each costs one more): on a thin uplink the retransmission meets the same full
    queue that dropped the packet."""


@dataclass(slots=True)
class RepairWait:
    """The repair times of one publisher's video (every SSRC of its receiver)."""

    policy: RepairWaitPolicy = field(default_factory=RepairWaitPolicy)
    smoothed: float | None = None
    """Smoothed repair time (seconds); None before the first."""
    deviation: float = 0.0
    samples: int = 0
    in_time: float = 1.0
    """Smoothed share of repairs that came within the cap."""
    wait: float = 0.0
    """The current wait (seconds)."""

    def __post_init__(self) -> None:
        self.wait = self.policy.floor

    def sample(self, seconds: float) -> None:
        """A missing packet arrived ``seconds`` after its gap was seen (RFC 6298's update)."""
        if seconds < 0:
            return
        self.samples += 1
        if self.smoothed is None:
            self.smoothed, self.deviation = seconds, seconds / 2
        else:
            self.deviation = 0.75 * self.deviation + 0.25 * abs(self.smoothed - seconds)
            self.smoothed = 0.875 * self.smoothed + 0.125 * seconds
        policy = self.policy
        self.in_time += ((seconds <= policy.cap) - self.in_time) / 8
        if self.in_time < policy.worth:  # most holes cannot be repaired in time: skip soon
            self.wait = policy.floor
            return
        wanted = (
            (1 + policy.repeats) * self.smoothed
            + policy.deviations * self.deviation
            + policy.margin
        )
        self.wait = min(policy.cap, max(policy.floor, wanted))
