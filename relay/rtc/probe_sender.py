"""One viewer's probe clusters on the wire: the thin seam between ``relay.media.probe`` (when and
how much), the ``BandwidthEstimator`` (what the feedback measured) and the video ``DirectSender``.

Probe bytes are RTX retransmissions of the video packets just sent (RFC 4588), as libwebrtc's
pacer pads with "redundant payloads" when RTX is negotiated: a full-size packet per ~1200 bytes
of probe (padding-only packets carry at most 255 bytes each: four to five times the packets,
each an SRTP protect and a send), a duplicate the viewer drops, and a repair when the original
was lost. They are sent with the video frames (``DirectSender.after_frame``, set only while a
cluster runs: the send path pays nothing otherwise), so no timer runs: a 0.3 s cluster is about
nine frames' worth. Only for viewers that negotiated RTX and
transport-cc (``DirectSender.can_probe``): without feedback a probe measures nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.media.estimator import BandwidthEstimate, BandwidthEstimator, Usage
from relay.media.probe import ProbeConfig, ProbeController
from relay.rtc.direct_sender import DirectSender

MAX_PACKETS = 24  # probe packets sent with one frame at most


class ProbeSender:
    def __init__(
        self,
        video: DirectSender,
        estimator: BandwidthEstimator,
        config: ProbeConfig | None = None,
        *,
        now: float = 0.0,
    ) -> None:
        self.video = video
        self.estimator = estimator
        self.controller = ProbeController(config, now=now)

    def tick(self, now: float, estimate: BandwidthEstimate, higher: Sequence[int]) -> None:
        """Every look at the viewer (``ViewerService.adapt``): take the measured clusters, maybe
        start one. ``higher``: the bitrates of the layers above the viewer's, nearest first."""
        estimator = self.estimator
        results = estimator.take_probe_results(now)
        if not self.video.can_probe:
            return
        if self.controller.active is not None and self.controller.due(now) is None:
            self._end(now)  # over, and no frame came to close it
        cluster = self.controller.update(
            now, estimate, higher, results, lost_packets=estimator.lost_packets
        )
        if cluster is not None:
            estimator.begin_probe(cluster.id, now)
            self.video.after_frame = self.on_frame  # only while a cluster runs: the send path

    def _end(self, now: float) -> None:
        self.estimator.end_probe(now)
        self.video.after_frame = None

    def on_frame(self, now: float) -> None:
        """A video frame went out: the probe bytes due go with it."""
        controller, estimator = self.controller, self.estimator
        due = controller.due(
            now,
            overuse=estimator.usage is Usage.OVERUSE,
            lost_packets=estimator.lost_packets,
            queued=estimator.probe_queued,
        )
        if due is None:
            self._end(now)
            return
        rewriter = self.video.rewriter
        if not due or rewriter is None:
            return
        sent = 0
        for sequence, size in rewriter.recent(MAX_PACKETS):
            if sent >= due:
                break
            sent += self.video.resend(sequence, size, now)
        controller.sent(sent)

    def switched(self, now: float, *, up: bool) -> None:
        if up:
            self.estimator.renew_probe(now)
        self.controller.switched(now, down=not up)
        if self.estimator.probing:
            self._end(now)

    def probed(self, now: float, higher: int) -> int | None:
        return self.controller.probed(now, higher)
