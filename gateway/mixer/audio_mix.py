"""Audio mixing (pure): per-anchor input buffers, gain and mute, and a limiter that never clips.

Everything is float32 mono at the program rate (48 kHz); the worker resamples each anchor's
decoded audio before it reaches ``InputBuffer`` and encodes ``AudioMixer.mix``'s output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from .specs import AudioControl as AudioControl  # re-exported: its home moved to specs

Samples = npt.NDArray[np.float32]


class InputBuffer:
    """One anchor's pending samples. A short underrun reads as silence; more than ``max_samples``
    pending (the anchor ran ahead or the mixer stalled) drops the oldest, so delay stays bounded.
    Waits for ``prebuffer`` samples before it starts (and after running dry) to absorb jitter.

    A hiccup (the anchor's packets held up, then arriving at once; the mixer thread starved)
    would otherwise leave its backlog as delay for good. So the lowest level seen after a pop
    over each ``window`` pops is the standing delay: what of it exceeds ``target`` samples is
    dropped (oldest first), which brings the delay back to about ``target`` within a window
    while short jitter, which the level recovers from, is never cut.

    A ring of ``max_samples`` allocated once, and ``pop`` hands out one kept block: no array is
    allocated per audio frame (the mixer pops every anchor 50 times a second). The block
    ``pop`` returns is valid until the next ``pop``."""

    def __init__(
        self,
        max_samples: int = 9600,
        prebuffer: int = 960,
        *,
        target: int | None = None,
        window: int = 50,
    ) -> None:
        self.max_samples = max_samples
        self.prebuffer = prebuffer
        self.target = prebuffer if target is None else target
        self.window = window
        self._ring: Samples = np.zeros(max_samples, np.float32)
        self._head = 0  # index of the oldest pending sample
        self._size = 0
        self._out: Samples = np.zeros(0, np.float32)  # the block ``pop`` hands out
        self._started = False
        self._pops = 0
        self._low: int | None = None
        self.underruns = 0
        self.dropped = 0
        self.trimmed = 0  # samples dropped to cut a standing delay (also counted in dropped)

    def __len__(self) -> int:
        return self._size

    def _drop(self, n: int) -> None:
        self._head = (self._head + n) % self.max_samples
        self._size -= n

    def push(self, samples: Samples) -> None:
        cap = self.max_samples
        n = int(samples.size)
        if n >= cap:  # only the newest ``cap`` samples can stay
            self.dropped += self._size + n - cap
            self._ring[:] = samples[n - cap :]
            self._head, self._size = 0, cap
            return
        extra = self._size + n - cap
        if extra > 0:
            self._drop(extra)
            self.dropped += extra
        tail = (self._head + self._size) % cap
        first = min(n, cap - tail)
        self._ring[tail : tail + first] = samples[:first]
        if first < n:
            self._ring[: n - first] = samples[first:]
        self._size += n

    def _read(self, out: Samples, n: int) -> None:
        """The ``n`` oldest samples into ``out[:n]``, dropped from the ring."""
        first = min(n, self.max_samples - self._head)
        out[:first] = self._ring[self._head : self._head + first]
        if first < n:
            out[first:n] = self._ring[: n - first]
        self._drop(n)

    def pop(self, n: int) -> Samples:
        out = self._out
        if out.size != n:
            out = self._out = np.zeros(n, np.float32)
        if not self._started:
            if self._size < self.prebuffer:
                out.fill(0.0)
                return out
            self._started = True
        take = min(n, self._size)
        self._read(out, take)
        if take < n:
            out[take:] = 0.0
            self.underruns += 1
            self._started = False
            self._pops, self._low = 0, None
            return out
        level = self._size
        self._low = level if self._low is None else min(self._low, level)
        self._pops += 1
        if self._pops >= self.window:
            excess = self._low - self.target
            if excess > 0:
                self._drop(excess)
                self.trimmed += excess
                self.dropped += excess
            self._pops, self._low = 0, None
        return out


class Limiter:
    """Peak limiter on blocks: instant attack (a block never exceeds ``ceiling``), release ramps
    the gain back up by ``release_per_block`` so loud bursts do not pump."""

    def __init__(self, ceiling: float = 0.98, release_per_block: float = 0.05) -> None:
        self.ceiling = ceiling
        self.release = release_per_block
        self.gain = 1.0
        self.engaged_blocks = 0

    def process(self, block: Samples) -> Samples:
        if block.size == 0:
            return block
        peak = float(max(block.max(), -block.min()))
        target = 1.0 if peak <= self.ceiling else self.ceiling / peak
        if target == 1.0 and self.gain == 1.0:
            return block  # not engaged, nothing to release: as it came (within [-1, 1])
        if target < self.gain:
            self.engaged_blocks += 1
            gains: Samples | float = target
            self.gain = target
        else:
            end = min(target, self.gain + self.release)
            gains = np.linspace(self.gain, end, block.size, dtype=np.float32)
            self.gain = end
        out = (block * gains).astype(np.float32)
        return np.clip(out, -1.0, 1.0)  # belt and braces: float rounding never clips


_UNITY = AudioControl()


class AudioMixer:
    """Sums anchors' blocks with their gain (muted = 0) and limits the result. The sum is made
    in one kept array: the block ``mix`` returns is valid until the next ``mix``."""

    def __init__(self, frame_samples: int = 960, ceiling: float = 0.98) -> None:
        self.frame_samples = frame_samples
        self.limiter = Limiter(ceiling)
        self._acc: Samples = np.zeros(frame_samples, np.float32)

    def mix(
        self,
        blocks: Mapping[str, Samples],
        controls: Mapping[str, AudioControl],
        exclude: Iterable[str] = (),
    ) -> Samples:
        """One block of the program (or, with ``exclude``, of everyone but them)."""
        skip = set(exclude) if exclude else ()
        n = self.frame_samples
        acc = self._acc
        acc.fill(0.0)
        for anchor, block in blocks.items():
            ctl = controls.get(anchor, _UNITY)
            if anchor in skip or ctl.muted or ctl.gain <= 0:
                continue
            part = block[:n]
            if ctl.gain == 1.0:  # the usual case: no scaled temporary per anchor and block
                acc[: part.size] += part
            else:
                acc[: part.size] += part * np.float32(ctl.gain)
        return self.limiter.process(acc)


class MixMinus:
    """Each anchor's mix of everyone else (gain and mute applied), each through a limiter of its
    own: the sum of every weighted block minus the anchor's own, O(anchors) per block rather
    than one full mix per anchor. Nothing is computed when nobody listens (``anchors`` empty)."""

    def __init__(self, frame_samples: int = 960, ceiling: float = 0.98) -> None:
        self.frame_samples = frame_samples
        self.ceiling = ceiling
        self.limiters: dict[str, Limiter] = {}

    def mix(
        self,
        blocks: Mapping[str, Samples],
        controls: Mapping[str, AudioControl],
        anchors: Iterable[str],
    ) -> dict[str, Samples]:
        """One block for each of ``anchors``: everyone in ``blocks`` but that anchor."""
        for gone in [a for a in self.limiters if a not in blocks]:
            del self.limiters[gone]
        wanted = list(anchors)
        if not wanted:
            return {}
        n = self.frame_samples
        total = np.zeros(n, np.float32)
        parts: dict[str, Samples] = {}
        for anchor, block in blocks.items():
            ctl = controls.get(anchor, _UNITY)
            if ctl.muted or ctl.gain <= 0:
                continue
            part = np.zeros(n, np.float32)
            part[: block.size] = block[:n] * np.float32(ctl.gain)
            parts[anchor] = part
            total += part
        out: dict[str, Samples] = {}
        for anchor in wanted:
            limiter = self.limiters.get(anchor)
            if limiter is None:
                limiter = self.limiters[anchor] = Limiter(self.ceiling)
            own = parts.get(anchor)
            out[anchor] = limiter.process(total - own if own is not None else total.copy())
        return out


def to_s16(block: Samples) -> npt.NDArray[np.int16]:
    return np.round(np.clip(block, -1.0, 1.0) * 32767).astype(np.int16)
