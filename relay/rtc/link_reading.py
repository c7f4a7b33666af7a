"""A viewer's loss and estimate, read every half second for a sender of extra bytes (ULPFEC
parity: ``relay.rtc.fec_sender``; audio RED copies: ``relay.rtc.red_sender``): the larger of
its receiver reports' loss and its transport-cc loss (either may lag a change), its
transport-cc target and sending rate, and the rate the extra bytes themselves took, so what
they may take is judged beside the media alone (``relay.media.retransmit.rtx_allowance``)."""

from __future__ import annotations

from dataclasses import dataclass

from relay.media.estimator import BandwidthEstimator
from relay.media.report_loss import ReportLoss
from relay.media.retransmit import rtx_allowance

LOSS_EVERY = 0.5  # seconds between two readings of the viewer's loss


@dataclass(frozen=True, slots=True)
class LinkReading:
    loss: float  # 0..1
    target_bps: int | None  # the transport-cc target (None: no such estimate)
    sent_bps: float  # everything sent to the viewer (transport-cc), the extra bytes included
    extra_bps: float  # what the extra bytes took since the last reading

    def allowance(self, share: float) -> float | None:
        """Bits per second the extra bytes may take beside the media (retransmissions' rule,
        and they share it: both are in what was sent); None without a transport-cc target."""
        if self.target_bps is None or self.sent_bps <= 0:
            return None
        media = max(1.0, self.sent_bps - self.extra_bps)
        return rtx_allowance(self.target_bps, media, share, self.loss)

    @property
    def media_bps(self) -> float:
        return max(1.0, self.sent_bps - self.extra_bps)


class LinkReader:
    """``due(now)`` says when the next reading is; ``read(now, octets)`` takes it, ``octets``
    being the extra bytes sent so far."""

    def __init__(self, estimator: BandwidthEstimator | None, report_loss: ReportLoss) -> None:
        self._estimator = estimator
        self._reports = report_loss
        self.next_at = 0.0
        self._bytes_at: float | None = None
        self._bytes_seen = 0

    def read(self, now: float, octets: int) -> LinkReading:
        self.next_at = now + LOSS_EVERY
        extra_bps = 0.0
        if self._bytes_at is not None and now > self._bytes_at:
            extra_bps = 8 * (octets - self._bytes_seen) / (now - self._bytes_at)
        self._bytes_at, self._bytes_seen = now, octets
        loss = self._reports.fraction
        target: int | None = None
        sent = 0.0
        estimator = self._estimator
        if estimator is not None:
            estimate = estimator.snapshot(now)
            if estimate.source == "twcc":  # the larger: either may lag a change
                loss = max(loss, estimate.loss_fraction)
                target, sent = estimate.target_bps, estimate.sent_bps
        return LinkReading(loss, target, sent, extra_bps)
