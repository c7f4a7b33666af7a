"""Per-frame quantiser choice for an encoder run at constant QP (sans-I/O: sizes in, QP out).

x264's own average-bitrate control needs its lowres lookahead on every frame, about a quarter of
an ultrafast 720p encode (BENCHMARKS.md, "Code figures"); at a forced QP x264 skips it. This
picks that QP: a P frame's size is modelled as ``complexity * 2 ** (-qp / 6)`` (the size halves
every 6 QP), the complexity taken from the P frames just coded; each frame gets the QP that
would spend its share of the bitrate minus a part of what was overspent so far (a leaky bucket
draining at the bitrate, repaid over ``horizon`` seconds). A keyframe gets the P frames' QP
less ``keyframe_offset`` and its extra size becomes debt the next frames repay, as a live
encoder's VBV would. Steps are bounded (down 3, up 4 a frame): one odd frame never swings the
picture.
"""

from __future__ import annotations

import math

KEYFRAME_TO_P = 3.0  # an intra frame's size over a P frame's at one QP, a first guess only


class QpRateControl:
    def __init__(
        self,
        bitrate: int,
        fps: float,
        *,
        qp_min: int = 16,
        qp_max: int = 51,
        start_qp: int = 30,
        horizon: float = 0.5,
        keyframe_offset: int = 3,
    ) -> None:
        if bitrate <= 0 or fps <= 0:
            raise ValueError("bitrate and fps must be positive")
        self.per_frame = bitrate / fps  # bits
        self.window = max(1.0, horizon * fps)  # frames over which debt is repaid
        self.qp_min, self.qp_max = qp_min, qp_max
        self.keyframe_offset = keyframe_offset
        self.qp = min(max(start_qp, qp_min), qp_max)
        self.debt = 0.0  # bits sent beyond the budget so far (negative: unspent, bounded)
        self.complexity: float | None = None  # a P frame's bits at QP 0, smoothed

    def next_qp(self, keyframe: bool = False) -> int:
        """The QP for the next frame; a keyframe's is ``keyframe_offset`` below the P frames'
        (x264's own I/P ratio, 1.4 in quantiser step: the P frames that follow predict from
        it, so its quality carries over the GOP)."""
        if self.complexity is None:
            return self.qp
        target = max(self.per_frame - self.debt / self.window, 0.1 * self.per_frame)
        want = 6.0 * math.log2(self.complexity / target)
        qp = min(max(round(want), self.qp - 3, self.qp_min), self.qp + 4, self.qp_max)
        self.qp = qp
        return max(qp - self.keyframe_offset, self.qp_min) if keyframe else qp

    def update(self, bits: int, qp: int, keyframe: bool) -> None:
        """Account a coded frame of ``bits`` at ``qp``."""
        self.debt = max(self.debt + bits - self.per_frame, -self.per_frame * self.window)
        if bits <= 0:
            return
        c = bits * 2.0 ** (qp / 6.0)
        if keyframe:  # a rough guess for the first P frames (an I frame is a few P frames)
            if self.complexity is None:
                self.complexity = c / KEYFRAME_TO_P
            return
        self.complexity = c if self.complexity is None else 0.5 * self.complexity + 0.5 * c
