"""One viewer's audio in RED (``relay.media.audio_red``) in the direct send path.

The frame's packet comes from the node's shared templates as a RED packet with its primary block
only (``SendProfile.red_payload_type``: one header for every RED viewer); here the viewer's own
earlier payloads are put ahead of it (they differ from viewer to viewer only when a queue
dropped a frame). A frame of several packets (not Opus) goes as the template has it. With
``on_loss``, the copies follow the viewer's loss and estimate (``relay.media.audio_red.copies_for``,
read every half second: ``relay.rtc.link_reading``): none on a clean link or on one that is full.
"""

from __future__ import annotations

from relay.media.audio_red import RED_SHARE, RedEncoder, copies_for
from relay.media.estimator import BandwidthEstimator
from relay.media.frames import EncodedFrame
from relay.media.report_loss import ReportLoss
from relay.rtc.link_reading import LinkReader
from relay.rtc.rtp_rewrite import FramePackets, SendProfile


class RedSender:
    """``wrap`` each audio frame's packets before they are numbered (the history keeps them as
    sent); ``added`` is the bytes the last frame gained."""

    def __init__(
        self,
        profile: SendProfile,
        distance: int,
        *,
        on_loss: bool = False,
        estimator: BandwidthEstimator | None = None,
        report_loss: ReportLoss | None = None,
    ) -> None:
        self.encoder = RedEncoder(profile.payload_type, distance)
        self.added = 0
        self.loss = 0.0  # the loss the copies were last set from
        self._link = LinkReader(estimator, report_loss or ReportLoss()) if on_loss else None
        if self._link is not None:
            self.encoder.copies_now = 0
        self._payload_at: float | None = None
        self._payload_seen = 0

    @property
    def copies(self) -> int:
        return self.encoder.copies

    @property
    def octets(self) -> int:
        return self.encoder.octets

    @property
    def copies_now(self) -> int:
        return self.encoder.copies_now

    def _update(self, now: float) -> None:
        assert self._link is not None
        encoder = self.encoder
        reading = self._link.read(now, encoder.octets)
        copy_bps = 0.0
        if self._payload_at is not None and now > self._payload_at:
            copy_bps = 8 * (encoder.payload_octets - self._payload_seen) / (now - self._payload_at)
        self._payload_at, self._payload_seen = now, encoder.payload_octets
        self.loss = reading.loss
        encoder.copies_now = copies_for(
            encoder.distance,
            on=encoder.copies_now > 0,
            loss=reading.loss,
            allowed_bps=reading.allowance(RED_SHARE),
            copy_bps=copy_bps,
        )

    def wrap(self, packets: FramePackets, frame: EncodedFrame, now: float = 0.0) -> FramePackets:
        if self._link is not None and now >= self._link.next_at:
            self._update(now)
        if len(packets.templates) != 1 or len(frame.payloads) != 1:
            self.added = 0
            return packets
        payload = frame.payloads[0]
        red = self.encoder.encode(payload, frame.timestamp)
        if len(red) == len(payload) + 1:  # no copies: the template is that packet already
            self.added = 0
            return packets
        template = packets.templates[0]
        packet = template[: len(template) - len(payload) - 1] + red
        self.added = len(packet) - len(template)
        return FramePackets((packet,), packets.runs, (len(packet),))
