"""One viewer's ULPFEC in the direct send path: parity after its own numbering, at its loss.

``DirectSender.send_frame`` numbers a frame for the viewer (``RtpRewriter.assign``) and, when the
viewer negotiated red + ulpfec (its packets are RED already: ``SendProfile.red_payload_type``),
hands the numbered frame here; the parity packets that come back are sent right after the
frame's, in the same SSRC and sequence space, kept in the viewer's history (a NACK for one is
answered like any), recorded for transport-cc and counted in what the viewer was sent, so the
retransmission allowance (``relay.media.retransmit``) sees the room parity left. The level
follows the viewer's loss (``relay.media.ulpfec.protection``; none on a clean link), read every
half second from its receiver reports and transport-cc feedback (loss before repair:
``relay.rtc.link_reading``), and
parity that does not fit beside the media in its bandwidth estimate is not sent.
"""

from __future__ import annotations

import math
from struct import Struct

from relay.media.estimator import BandwidthEstimator
from relay.media.report_loss import ReportLoss
from relay.media.ulpfec import FecPlan, Parity, fec_payload
from relay.rtc.link_reading import LinkReader
from relay.rtc.rtp_rewrite import SEQ_TS_SSRC

try:
    from relay.rtc._srtp_writer import ulpfec_parity as _c_parity
except ImportError:  # built without a C compiler: the Python reference
    _c_parity = None  # type: ignore[assignment]

PARITY: Parity = fec_payload if _c_parity is None else _c_parity
"""The XOR parity in C when built (``_srtp_writer.c``), else ``relay.media.ulpfec``'s."""
FEC_SHARE = 0.25
"""Share of the viewer's estimate parity may take at most (``relay.media.retransmit``'s rule:
at least twice the loss, at most this)."""
MAX_SPREAD = 16
"""Media packets per parity packet beyond which parity is not worth sending (what the estimate
allows repairs one loss in more than this many packets)."""
_U16 = Struct("!H")


class FecSender:
    """The parity of one viewer's video (``relay.media.ulpfec.FecPlan`` driven by its loss)."""

    def __init__(
        self,
        red_pt: int,
        ulpfec_pt: int,
        estimator: BandwidthEstimator | None,
        report_loss: ReportLoss,
    ) -> None:
        self.plan = FecPlan(red_pt, ulpfec_pt, PARITY)
        self._link = LinkReader(estimator, report_loss)
        self.loss = 0.0  # the loss the level was last set from
        self.limited = 0  # readings at which the estimate cut the parity the loss asked for

    @property
    def packets(self) -> int:
        return self.plan.packets

    @property
    def octets(self) -> int:
        return self.plan.octets

    @property
    def overhead(self) -> float:
        """Parity packets per media packet at the current level for delta frames (0: off)."""
        level = self.plan.level
        return 0.0 if level is None else 1.0 / level[0]

    def _update(self, now: float) -> None:
        reading = self._link.read(now, self.plan.octets)
        loss = self.loss = reading.loss
        plan = self.plan
        plan.set_loss(loss)
        level = plan.level
        allowed = reading.allowance(FEC_SHARE)
        if level is not None and allowed is not None:
            # parity takes what the estimate leaves beside the media, as retransmissions do
            # (the same allowance, and they share it: both are in what was sent), at least a
            # share that grows with the loss: fewer parity packets, never on and off
            media = reading.media_bps
            need = math.ceil(media / max(allowed, 1.0))  # media packets per parity packet
            if need > level[0]:
                self.limited += 1
                if need > MAX_SPREAD:
                    plan.level = None
                    plan.reset()
                else:
                    plan.level = (need, max(level[1], math.ceil(need / 2)))

    def protect(
        self,
        templates: tuple[bytes, ...],
        seq: int,
        ts: int,
        ssrc: int,
        twcc_offset: int,
        twcc_first: int,
        keyframe: bool,
        now: float,
    ) -> list[bytes]:
        """The parity packets to send after this frame's (unnumbered: the writer numbers them
        on from the frame's), or none. ``templates`` are the frame's RED packets, numbered
        ``seq``... with timestamp ``ts`` and, with ``twcc_offset``, transport-wide sequence
        numbers from ``twcc_first``: the parity covers the packets as the viewer receives them."""
        if now >= self._link.next_at:
            self._update(now)
        if self.plan.level is None:
            return []
        numbered = []
        for i, template in enumerate(templates):
            buf = bytearray(template)
            SEQ_TS_SSRC.pack_into(buf, 2, (seq + i) & 0xFFFF, ts, ssrc)
            if twcc_offset:
                _U16.pack_into(buf, twcc_offset, (twcc_first + i) & 0xFFFF)
            numbered.append(bytes(buf))
        return self.plan.on_frame(numbered, keyframe, templates[-1])

    def reset(self) -> None:
        """A frame did not go out whole: parity over it would repair nothing."""
        self.plan.reset()
