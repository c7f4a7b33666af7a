"""Audio mixing (pure): per-anchor input buffers, gain and mute, and a limiter that never clips.

Everything is float32 mono at the program rate (48 kHz); the worker resamples each anchor's
decoded audio before it reaches ``InputBuffer`` and encodes ``AudioMixer.mix``'s output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class AudioControl:
    """An operator's setting for one anchor in the mix."""

    gain: float = 1.0  # linear; 0..4
    muted: bool = False


class InputBuffer:
    """One anchor's pending samples. A short underrun reads as silence; more than ``max_samples``
    pending (the anchor ran ahead or the mixer stalled) drops the oldest, so delay stays bounded.
    Waits for ``prebuffer`` samples before it starts (and after running dry) to absorb jitter."""

    def __init__(self, max_samples: int = 9600, prebuffer: int = 960) -> None:
        self.max_samples = max_samples
        self.prebuffer = prebuffer
        self._buf: Samples = np.zeros(0, np.float32)
        self._started = False
        self.underruns = 0
        self.dropped = 0

    def __len__(self) -> int:
        return int(self._buf.size)

    def push(self, samples: Samples) -> None:
        self._buf = np.concatenate([self._buf, samples.astype(np.float32, copy=False)])
        extra = self._buf.size - self.max_samples
        if extra > 0:
            self._buf = self._buf[extra:]
            self.dropped += extra

    def pop(self, n: int) -> Samples:
        if not self._started:
            if self._buf.size < self.prebuffer:
                return np.zeros(n, np.float32)
            self._started = True
        out = np.zeros(n, np.float32)
        take = min(n, int(self._buf.size))
        out[:take] = self._buf[:take]
        self._buf = self._buf[take:]
        if take < n:
            self.underruns += 1
            self._started = False
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
        peak = float(np.max(np.abs(block)))
        target = 1.0 if peak <= self.ceiling else self.ceiling / peak
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


class AudioMixer:
    """Sums anchors' blocks with their gain (muted = 0) and limits the result."""

    def __init__(self, frame_samples: int = 960, ceiling: float = 0.98) -> None:
        self.frame_samples = frame_samples
        self.limiter = Limiter(ceiling)

    def mix(
        self,
        blocks: Mapping[str, Samples],
        controls: Mapping[str, AudioControl],
        exclude: Iterable[str] = (),
    ) -> Samples:
        """One block of the program (or a mix-minus without ``exclude``)."""
        skip = set(exclude)
        acc = np.zeros(self.frame_samples, np.float32)
        for anchor, block in blocks.items():
            ctl = controls.get(anchor, AudioControl())
            if anchor in skip or ctl.muted or ctl.gain <= 0:
                continue
            acc[: block.size] += block[: self.frame_samples] * np.float32(ctl.gain)
        return self.limiter.process(acc)


def to_s16(block: Samples) -> npt.NDArray[np.int16]:
    return np.round(np.clip(block, -1.0, 1.0) * 32767).astype(np.int16)


def from_s16(pcm: npt.NDArray[np.int16]) -> Samples:
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
