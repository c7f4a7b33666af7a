"""The per-packet impairment model of one direction of a link (sans-I/O: packet size, ``now`` and
a seeded ``random.Random`` in, a delivery time or a drop out).

netem is missing from this kernel, so the forwarder applies this model in user space.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Two-state burst loss: ``p`` = P(good -> bad), ``r`` = P(bad -> good), per packet; a packet
    is lost with ``loss_good`` in the good state and ``loss_bad`` in the bad one."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p", "r", "loss_good", "loss_bad"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, not {value}")
        if self.p + self.r == 0:
            raise ValueError("p and r cannot both be 0")

    @classmethod
    def from_burst(cls, loss: float, mean_burst: float) -> GilbertElliott:
        """The chain whose bad state loses every packet, with mean loss ``loss`` and bursts of
        ``mean_burst`` packets on average (bad-state sojourns are geometric with mean 1/r)."""
        if not 0 < loss < 1 or mean_burst < 1:
            raise ValueError("loss must be within (0, 1) and mean_burst >= 1")
        r = 1.0 / mean_burst
        return cls(p=loss * r / (1.0 - loss), r=r)

    @property
    def mean_loss(self) -> float:
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1.0 - bad) * self.loss_good


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of a link. ``jitter_ms``: each packet's delay is ``delay_ms`` plus a uniform
    draw within +-``jitter_ms``, kept in order (a packet never overtakes the one before it, as on
    a real path); ``reorder`` is the share of packets held ``reorder_ms`` longer, which later
    ones then overtake. ``loss`` is independent random loss; ``burst`` replaces it with a
    Gilbert-Elliott chain."""

    loss: float = 0.0
    burst: GilbertElliott | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    reorder_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.reorder <= 1.0:
            raise ValueError("loss and reorder are shares within 0..1")
        if min(self.delay_ms, self.jitter_ms, self.reorder_ms) < 0:
            raise ValueError("delays cannot be negative")
        if self.jitter_ms > self.delay_ms:
            raise ValueError("jitter_ms cannot exceed delay_ms (delays would go negative)")

    @property
    def transparent(self) -> bool:
        return self == LinkSpec()

    def to_dict(self) -> dict[str, object]:
        burst = self.burst
        return {
            "loss": self.loss,
            "burst": None if burst is None else [burst.p, burst.r, burst.loss_good, burst.loss_bad],
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "reorder": self.reorder,
            "reorder_ms": self.reorder_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LinkSpec:
        burst = data.get("burst")
        ge = None
        if isinstance(burst, list):
            ge = GilbertElliott(*(float(v) for v in burst))
        return cls(
            loss=float(data.get("loss", 0.0)),  # type: ignore[arg-type]
            burst=ge,
            delay_ms=float(data.get("delay_ms", 0.0)),  # type: ignore[arg-type]
            jitter_ms=float(data.get("jitter_ms", 0.0)),  # type: ignore[arg-type]
            reorder=float(data.get("reorder", 0.0)),  # type: ignore[arg-type]
            reorder_ms=float(data.get("reorder_ms", 0.0)),  # type: ignore[arg-type]
        )


class Impairment:
    """Applies a LinkSpec packet by packet: ``decide`` returns when to deliver, or None to drop."""

    def __init__(self, spec: LinkSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._bad = False
        self._last_at = float("-inf")  # delivery time of the last in-order packet
        self.packets = 0
        self.bytes = 0
        self.dropped = 0
        self.reordered = 0

    def _lost(self) -> bool:
        spec, rng = self.spec, self._rng
        ge = spec.burst
        if ge is None:
            return spec.loss > 0 and rng.random() < spec.loss
        if self._bad:
            self._bad = rng.random() >= ge.r
        else:
            self._bad = rng.random() < ge.p
        loss = ge.loss_bad if self._bad else ge.loss_good
        return loss > 0 and rng.random() < loss

    def decide(self, size: int, now: float) -> float | None:
        self.packets += 1
        self.bytes += size
        if self._lost():
            self.dropped += 1
            return None
        spec, rng = self.spec, self._rng
        delay = spec.delay_ms
        if spec.jitter_ms:
            delay += rng.uniform(-spec.jitter_ms, spec.jitter_ms)
        at = max(now + delay / 1000.0, self._last_at)
        if spec.reorder and rng.random() < spec.reorder:
            self.reordered += 1
            return at + spec.reorder_ms / 1000.0  # held back; the in-order line does not wait
        self._last_at = at
        return at
