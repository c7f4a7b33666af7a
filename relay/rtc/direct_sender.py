"""The viewers' send path: EncodedFrames forwarded to one viewer at RTP level.

Frames skip the RTCRtpSender's RTP task altogether. The negotiated parameters are caught in
``send()``, packets are rewritten per viewer (``rtp_rewrite``), encrypted with the DTLS transport's
SRTP session and written to the nominated ICE pair's UDP socket synchronously (``srtp_writer``: a C
loop when built); NACKs are answered from our own history within a budget and a playout deadline
(``relay.media.retransmit``), and so are the media packets a transport-cc viewer's feedback
reports lost that no NACK asked for (``relay.media.feedback_repair``: a lost NACK); sender
reports read our counters.
aiortc's RTCP handling (RR, PLI) keeps running, and so do its sender reports (with ``own_reports``
sent from the viewer service's one tick for all viewers, not a task per sender); receiver
reports' loss is noted on the way, over a second or more (``relay.media.report_loss``: the layer
selector reads it). With a session's ``BandwidthEstimator``, every packet sent (retransmissions
too) is recorded there, numbered with a transport-wide sequence number when the viewer
negotiated transport-cc; receiver reports feed it, and its estimate limits the retransmission
rate. Every aiortc/aioice internal this needs is reached through ``relay/rtc/adapter.py``
(``SenderSeam``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from relay.media.estimator import BandwidthEstimator
from relay.media.feedback_repair import FeedbackRepair
from relay.media.frames import EncodedFrame
from relay.media.nack_solicit import EVERY, NackSolicitor
from relay.media.playout_delay import PlayoutDelayLimits, PlayoutDelayPolicy
from relay.media.report_loss import ReportLoss
from relay.media.retransmit import (
    FOLLOW_UP_AFTER,
    RetransmitBudget,
    RetransmitLimits,
    Verdict,
    estimate_allowance,
)
from relay.rtc.adapter import (
    AdapterError,
    SenderSeam,
    pair_remote_address,
    pair_socket,
    pair_stream,
)
from relay.rtc.fec_sender import FecSender
from relay.rtc.red_sender import RedSender
from relay.rtc.rtp_rewrite import (
    FramePackets,
    RtpRewriter,
    SendProfile,
    TemplateCache,
    extension_offset,
)
from relay.rtc.srtp_writer import (
    DatagramOut,
    PySrtpWriter,
    SrtpWriter,
    new_srtp_writer,
    protect_rtp,
)

log = logging.getLogger(__name__)

SR_INTERVAL = 0.2  # seconds between updates of the counters aiortc puts in sender reports
ALLOWANCE_EVERY = 0.05  # seconds between two readings of the estimate for retransmissions


def new_template_cache() -> TemplateCache:
    """One per node: shared by every direct sender it creates."""
    return TemplateCache(current_ntp_time)


def send_profile(
    parameters: RTCRtpSendParameters, *, fec: bool = True, audio_red: bool = False
) -> SendProfile:
    """What the viewer negotiated that shapes its packets. With ``fec`` and red + ulpfec
    negotiated (``relay.rtc.adapter.accept_red_ulpfec``), every video packet goes in RED, as
    libwebrtc senders send it (its ULPFEC decoder sees only RED packets), and a
    retransmission in RED's own RTX payload type: what was sent. With ``audio_red`` and red
    negotiated on audio (``relay.rtc.adapter.accept_audio_red``), audio goes in RED
    (``relay.rtc.red_sender``)."""
    primary = parameters.codecs[0]
    if primary.payloadType is None:
        raise AdapterError("negotiated codec has no payload type")

    def rtx_of(pt: int | None) -> int | None:
        return next(
            (
                c.payloadType
                for c in parameters.codecs
                if is_rtx(c) and c.parameters.get("apt") == pt
            ),
            None,
        )

    named = {c.name.lower(): c.payloadType for c in parameters.codecs}
    red, ulpfec = named.get("red"), named.get("ulpfec")
    if primary.mimeType.lower().startswith("audio/"):
        ulpfec = None
        if not audio_red or red == primary.payloadType:
            red = None
    elif not fec or red is None or ulpfec is None or red == primary.payloadType:
        red = ulpfec = None
    return SendProfile(
        payload_type=primary.payloadType,
        mid=parameters.muxId or None,
        extensions=tuple((e.uri, e.id) for e in parameters.headerExtensions),
        rtx_payload_type=rtx_of(primary.payloadType if red is None else red),
        red_payload_type=red,
        ulpfec_payload_type=ulpfec,
    )


class DirectSender:
    """Forwards EncodedFrames to one viewer at RTP level, bypassing the sender's RTP task.

    ``send_frame`` is synchronous: it returns False when the viewer's socket is backlogged (the
    frame went out in part at most; the caller drops to the next keyframe) and True otherwise,
    sent or not (a transport that is not up yet, or gone, just loses the frame; the session's own
    state handling ends it).
    """

    def __init__(
        self,
        sender: RTCRtpSender,
        cache: TemplateCache,
        *,
        on_keyframe_request: Callable[[], None],
        on_ready: Callable[[], None],
        gso: bool = True,
        native: bool = True,
        retransmit: RetransmitLimits | None = None,
        estimator: BandwidthEstimator | None = None,
        reports_to_estimator: bool = False,
        own_reports: bool = False,
        playout_delay: PlayoutDelayLimits | None = None,
        solicit: bool = False,
        solicit_lossy_every: float = EVERY,
        fec: bool = True,
        feedback_repair: bool | None = None,
        audio_red: int = 0,
        audio_red_on_loss: bool = False,
    ) -> None:
        self._seam = SenderSeam(sender)
        self._audio_red = audio_red  # redundant copies per audio packet when RED is negotiated
        self._audio_red_on_loss = audio_red_on_loss  # only while the viewer loses packets
        self.red: RedSender | None = None
        self._fec_allowed = fec  # ULPFEC in RED when the viewer negotiated it
        self.fec: FecSender | None = None
        # holes made so that a viewer that NACKs once asks again (relay/media/nack_solicit.py),
        # for one without transport-cc
        self._solicit = solicit
        self._solicit_lossy_every = solicit_lossy_every
        self.solicitor: NackSolicitor | None = None
        # media packets its transport-cc feedback reports lost that no NACK asked for
        # (relay/media/feedback_repair.py): counted unless ``feedback_repair`` is None (one
        # sender of the transport's: the video), resent as if NACKed when it is True
        self._feedback_repair = feedback_repair
        self.repair: FeedbackRepair | None = None
        self.repairs = 0  # of them, resent
        self._repair_timer: asyncio.TimerHandle | None = None
        # a minimum playout delay while the viewer needs repairs (relay/media/playout_delay.py),
        # when it negotiated the extension; the template id of each value sent
        self._playout_limits = playout_delay
        self.playout: PlayoutDelayPolicy | None = None
        self._playout_id = 0
        self._playout_tids: dict[bytes, int] = {}
        self.estimator = estimator  # the session's (shared by its senders: one transport)
        self._reports = reports_to_estimator and estimator is not None
        # where each packet's transport-wide sequence number goes (0: not negotiated, -1: not
        # found yet: read from the first frame's packets)
        self._twcc_offset = 0
        self._twcc_id: int | None = None
        self._allowance: float | None = None  # retransmission bits/s the estimate allows
        self._allowance_at = float("-inf")
        self.budget = RetransmitBudget(retransmit)
        self._clock_rate = 90000
        self._cache = cache
        self._pair: Any = None
        self._sock: socket.socket | None = None
        self._writer: SrtpWriter | None = None  # sends on self._out to self._pair
        self._out: DatagramOut | None = None  # self._sock, or an ICE-TCP pair's stream
        self._closed = False
        self._template_id = 0
        self._sr_due = 0.0
        self.gso = gso
        self.native = native  # the C send loop when built (relay/rtc/srtp_writer.py)
        self.gso_sends = 0
        self.rewriter: RtpRewriter | None = None
        self.octets = 0
        self._credited = 0  # of self.octets, given to the retransmission budget so far
        self.congested = 0
        self.errors = 0
        self.report_loss = ReportLoss()  # the loss over a second or more of receiver reports
        # the viewer's feedback: NACK messages and the sequence numbers they asked for, the
        # retransmissions sent (and their bytes), PLI/FIR keyframe requests
        self.nacks = 0
        self.nacked_packets = 0
        self.retransmissions = 0
        self.rtx_bytes = 0
        self.keyframe_requests = 0
        self.after_frame: Callable[[float], None] | None = None  # each frame sent (probes)
        self._seam.install(
            on_negotiated=self._negotiated,
            on_started=on_ready,
            on_rtcp=self._on_rtcp,
            before_stats=self._update_sender_report,
            retransmit=self._retransmit,
            on_keyframe_request=on_keyframe_request,
        )
        if own_reports:  # its sender reports come from the caller's tick, not aiortc's task
            self._seam.own_reports()

    def _negotiated(self, parameters: RTCRtpSendParameters) -> None:
        profile = send_profile(parameters, fec=self._fec_allowed, audio_red=self._audio_red > 0)
        red, ulpfec = profile.red_payload_type, profile.ulpfec_payload_type
        if red is not None and ulpfec is not None:
            self.fec = FecSender(red, ulpfec, self.estimator, self.report_loss)
        elif red is not None:
            self.red = RedSender(
                profile,
                self._audio_red,
                on_loss=self._audio_red_on_loss,
                estimator=self.estimator,
                report_loss=self.report_loss,
            )
        self._clock_rate = parameters.codecs[0].clockRate or 90000
        self._template_id = self._cache.template_id(profile)
        seam = self._seam
        self.rewriter = RtpRewriter(seam.ssrc, profile, rtx_ssrc=seam.rtx_ssrc)
        self._twcc_id = profile.transport_cc_id if self.estimator is not None else None
        self._twcc_offset = -1 if self._twcc_id is not None else 0
        if self._solicit and profile.transport_cc_id is None:
            self.solicitor = NackSolicitor(lossy_every=self._solicit_lossy_every)
        estimator = self.estimator
        tracked = self._feedback_repair is not None and self._twcc_id is not None
        if tracked and estimator is not None:
            self.repair = FeedbackRepair()
            estimator.on_lost = self._on_feedback_lost
        limits, ext_id = self._playout_limits, profile.playout_delay_id
        # (an id over 14 would turn the one-byte extension block into a two-byte one, moving
        # the transport-wide sequence number's offset between a frame and the next)
        if limits is not None and limits.enabled and ext_id is not None and ext_id <= 14:
            self.playout = PlayoutDelayPolicy(limits)
            self._playout_id = ext_id

    def _on_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket):
            if packet.fmt == RTCP_RTPFB_NACK:
                self.nacks += 1
                lost, solicited = packet.lost, False
                if self.solicitor is not None:
                    lost, solicited = self.solicitor.split(lost)
                self.nacked_packets += len(lost)
                rewriter = self.rewriter
                now = time.monotonic()
                if self.repair is not None:
                    self.repair.on_nack(lost, now)
                self.budget.on_nack(
                    lost,
                    rewriter.packets if rewriter is not None else 0,
                    self._seam.round_trip_time(),
                    now,
                    solicited=solicited,
                )
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.keyframe_requests += 1
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self._seam.ssrc:
                    now = time.monotonic()
                    self.report_loss.on_report(
                        report.highest_sequence,
                        report.packets_lost,
                        now,
                        report.fraction_lost / 256,
                    )
                    estimator = self.estimator
                    if self._reports and estimator is not None:
                        estimator.on_rtt(self._seam.round_trip_time())
                        estimator.on_receiver_report(
                            report.fraction_lost / 256, report.jitter / self._clock_rate, now
                        )

    @property
    def fraction_lost(self) -> float:
        """The viewer's loss over the last window of receiver reports (``ReportLoss``)."""
        return self.report_loss.fraction

    @property
    def lossy_reports(self) -> int:
        """Windows of receiver reports that lost ``relay.media.report_loss.LOSSY`` or more."""
        return self.report_loss.lossy

    @property
    def clean_reports(self) -> int:
        """Windows of receiver reports that covered a stream and lost less than that."""
        return self.report_loss.clean

    def round_trip_time(self) -> float | None:
        return self._seam.round_trip_time()

    def _route(self) -> SrtpWriter | None:
        """The send loop for the nominated ICE pair when the transport is up (None otherwise).

        It sends on our own duplicate of the pair's socket descriptor (``self._sock``, to
        ``self._pair``'s remote address): sending on it directly skips asyncio's transport
        layer, and a full send buffer shows as BlockingIOError. The route is kept until the
        nominated pair changes (called per frame and viewer)."""
        if self._closed:
            return None
        pair = self._seam.nominated_pair()
        if pair is self._pair and pair is not None:
            return self._writer
        if pair is None:
            return None
        pair_sock = pair_socket(pair)
        if pair_sock is None:
            return self._stream_route(pair)
        fd = pair_sock.fileno()
        if self._sock is not None:
            self._sock.close()
        self._sock = socket.socket(fileno=os.dup(fd))
        self._sock.setblocking(False)
        self._pair = pair
        self._out = self._sock
        self._writer = new_srtp_writer(
            self._seam.srtp(), self._sock, pair_remote_address(pair), native=self.native
        )
        if self.estimator is not None:
            self._writer.record_into(self.estimator.send_log)
        return self._writer

    def _stream_route(self, pair: Any) -> SrtpWriter | None:
        """An ICE-TCP pair: the Python loop writes each packet as one RFC 4571 frame to the
        pair's stream (a full stream queue shows as BlockingIOError, as a full socket does)."""
        stream = pair_stream(pair)
        if stream is None:
            return None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pair = pair
        self._out = stream
        self.gso = False  # a stream has no UDP GSO: no attempt, no refusal to log
        self._writer = PySrtpWriter(self._seam.srtp(), stream, pair_remote_address(pair))
        if self.estimator is not None:
            self._writer.record_into(self.estimator.send_log)
        return self._writer

    def close(self) -> None:
        """Release the duplicated socket (the ICE transport keeps its own)."""
        self._closed = True
        if self._repair_timer is not None:
            self._repair_timer.cancel()
            self._repair_timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pair = None
        self._writer = None
        self._out = None

    def send_frame(self, frame: EncodedFrame) -> bool:
        rewriter = self.rewriter
        if rewriter is None:
            return True
        writer = self._writer
        if writer is None or self._seam.nominated_pair() is not self._pair:  # _route's test
            try:
                writer = self._route()
            except Exception:  # e.g. EMFILE duplicating the socket: this viewer loses the frame
                self._count_error("direct route failed")
                return True
            if writer is None:
                return True
        now = time.monotonic()
        tid = self._template_id
        playout = self.playout
        if playout is not None:
            if now >= playout.next_at:
                playout.update(
                    now, self.budget.asked_total, rewriter.packets, self._seam.round_trip_time()
                )
            value = playout.value(now)
            if value is not None:
                tid = self._playout_tids.get(value, -1)
                if tid < 0:
                    extra = ((self._playout_id, value),)
                    tid = self._playout_tids[value] = self._cache.template_id(
                        rewriter.profile, extra
                    )
        packets = self._cache.packets(frame, rewriter.profile, tid)
        red = self.red
        if red is not None:  # the viewer's earlier audio payloads ahead of this one
            packets = red.wrap(packets, frame, now)
        filler: bytes | None = None
        solicitor = self.solicitor
        if solicitor is not None and solicitor.due(
            now, self.budget.asked_total, self.budget.asks_again, self.budget.loss
        ):
            number, filler = rewriter.filler()
            solicitor.made(number, filler)
        seq, ts = rewriter.assign(packets.templates, frame.timestamp, frame.keyframe, now)
        estimator = self.estimator
        templates, runs, size = packets.templates, packets.runs, frame.size
        if red is not None:
            size += red.added
        fec = self.fec
        metered = False  # the frame's bytes added to the estimator's meter by the send call
        try:
            twcc = self._twcc_offset
            if twcc < 0:
                twcc = self._find_twcc_offset(packets.templates[0])
            if twcc and estimator is not None and fec is None and not estimator.probing:
                # numbered, recorded and metered in the send call: one call per frame
                if self.repair is not None:
                    first = estimator.send_log.next[0]
                    self.repair.on_sent(first, seq, len(templates), now)
                self.gso_sends += writer.send_recorded(
                    templates, runs, seq, ts, rewriter.ssrc, self.gso, twcc, now, size
                )
                metered = True
            elif twcc and estimator is not None:
                first = estimator.record(packets.sizes, now)
                if self.repair is not None:
                    self.repair.on_sent(first, seq, len(packets.sizes), now)
                if fec is not None:
                    templates, runs, size = self._protect(
                        fec, packets, seq, ts, twcc, first, frame, now
                    )
                self.gso_sends += writer.send(
                    templates, runs, seq, ts, rewriter.ssrc, self.gso, twcc, first
                )
            else:
                if fec is not None:
                    templates, runs, size = self._protect(fec, packets, seq, ts, 0, 0, frame, now)
                self.gso_sends += writer.send(templates, runs, seq, ts, rewriter.ssrc, self.gso)
        except BlockingIOError:  # the socket's send buffer is full: this viewer is behind
            self.congested += 1
            if fec is not None:
                fec.reset()
            return False
        except Exception:  # an SRTP or socket failure loses this viewer's frame, nobody else's
            if fec is not None:
                fec.reset()
            self._count_error("direct send failed")
            return True
        if filler is not None:  # after the frame's packets: the receiver saw the hole first
            self._send_plain(filler)
        if writer.gso_refused and self.gso:
            self.gso = False  # one datagram per call from now on
            log.info("UDP GSO refused on this path: sending datagram by datagram")
        self.octets += size  # the budget is credited with it when a NACK comes
        if estimator is not None and not metered:
            estimator.add_sent(now, size)
        if self.after_frame is not None:
            self.after_frame(now)
        if frame.received_at >= self._sr_due:
            self._sr_due = frame.received_at + SR_INTERVAL
            self._update_sender_report(self._cache.ntp)  # the NTP time of this frame's send
        return True

    def _protect(
        self,
        fec: FecSender,
        packets: FramePackets,
        seq: int,
        ts: int,
        twcc: int,
        first: int,
        frame: EncodedFrame,
        now: float,
    ) -> tuple[tuple[bytes, ...], tuple[tuple[int, int], ...], int]:
        """The frame's packets with the parity due after them (``relay.rtc.fec_sender``),
        their GSO runs and the bytes to count: the parity is kept in the history for NACKs
        and numbered for transport-cc after the frame's own packets."""
        parity = fec.protect(
            packets.templates, seq, ts, self.rewriter_ssrc, twcc, first, frame.keyframe, now
        )
        if not parity:
            return packets.templates, packets.runs, frame.size
        extra = tuple(parity)
        rewriter = self.rewriter
        assert rewriter is not None
        rewriter.extend_last(extra)
        sizes = tuple(map(len, extra))
        if twcc and self.estimator is not None:
            self.estimator.record(sizes, now)  # numbered on from the frame's: first + n
        n = len(packets.templates)
        runs = packets.runs + tuple((n + i, n + i + 1) for i in range(len(extra)))
        return packets.templates + extra, runs, frame.size + sum(sizes)

    @property
    def rewriter_ssrc(self) -> int:
        rewriter = self.rewriter
        return 0 if rewriter is None else rewriter.ssrc

    def sender_report(self) -> bytes:
        """This sender's report (SR + SDES) as aiortc's RTCP task would send it now (with
        ``own_reports``: the caller sends it, ``send_reports``, ~every second)."""
        return self._seam.sender_report()

    def send_reports(self, payload: bytes) -> bool:
        """Send a compound of the transport's senders' reports; False: not connected."""
        return self._seam.send_reports(payload)

    def _find_twcc_offset(self, template: bytes) -> int:
        """The transport-wide sequence number's offset in this sender's packets (the same in
        every packet of its profile); 0 when the template has none."""
        found = extension_offset(template, self._twcc_id) if self._twcc_id is not None else None
        self._twcc_offset = found or 0
        return self._twcc_offset

    def _count_error(self, what: str) -> None:
        """Called inside an ``except``: the first failure is logged with its traceback."""
        self.errors += 1
        if self.errors == 1:
            log.exception(what)

    def _update_sender_report(self, ntp: int | None = None) -> None:
        """Hand aiortc our counters, and with ``ntp`` the NTP/RTP pair of the frame just sent,
        for its sender reports (~1 s apart) and ``getStats``; every frame would cost four
        name-mangled writes."""
        rewriter = self.rewriter
        if rewriter is None:
            return
        self._seam.set_report_counters(rewriter.packets, self.octets, ntp, rewriter.last_timestamp)

    def _send_plain(self, packet: bytes) -> None:
        """One packet outside the frame loop (a filler), protected and sent as it is."""
        out, pair = self._out, self._pair
        if out is None or pair is None:
            return
        with contextlib.suppress(OSError):
            out.sendto(self._seam.srtp().protect(packet), pair_remote_address(pair))

    async def _retransmit(self, sequence_number: int) -> None:
        rewriter = self.rewriter
        if rewriter is None or self._route() is None:
            return
        filler = None if self.solicitor is None else self.solicitor.filler(sequence_number)
        if filler is not None:  # lost, or the NACK left before it came: sent again, outside
            self._send_plain(filler)  # the budget (the receiver's jitter buffer waits on it)
            return
        self._answer(sequence_number, time.monotonic())

    def _on_feedback_lost(self, transport_seqs: list[int], now: float) -> None:
        """The estimator's feedback reported these lost: those no NACK asks for within the
        repair's margin are resent then (``_repair_due``)."""
        repair = self.repair
        if repair is None or self._closed:
            return
        due = repair.on_lost(transport_seqs, now)
        if due is not None and self._repair_timer is None:
            self._repair_timer = asyncio.get_running_loop().call_later(
                max(0.0, due - now), self._repair_due
            )

    def _repair_due(self) -> None:
        self._repair_timer = None
        repair, estimator = self.repair, self.estimator
        if repair is None or estimator is None or self._closed:
            return
        now = time.monotonic()
        try:
            unasked = repair.due(now, estimator.acked)
            if self._feedback_repair and self.rewriter is not None and self._route() is not None:
                for seq in unasked:
                    if self._answer(seq, now):
                        self.repairs += 1
        except Exception:
            self._count_error("feedback repair failed")
        due = repair.next_due()
        if due is not None:
            self._repair_timer = asyncio.get_running_loop().call_later(
                max(0.0, due - now), self._repair_due
            )

    def _answer(self, sequence_number: int, now: float) -> bool:
        """A packet asked for (a NACK, or feedback that reported it lost unasked), resent if
        the budget says so; True when it was."""
        rewriter = self.rewriter
        assert rewriter is not None
        found = rewriter.lookup_sent(sequence_number, now)
        if found is None:
            return False
        size, age, keyframe = found  # seconds since it was sent (the send path tells the time)
        superseded = rewriter.superseded(age, now)  # a keyframe went out after it
        estimator = self.estimator
        allowance = self._allowance
        if estimator is not None and now - self._allowance_at >= ALLOWANCE_EVERY:
            # a NACK storm asks for thousands of packets a second: the estimate is read anew
            # every ALLOWANCE_EVERY s, not per packet
            estimate = estimator.snapshot(now)
            allowance = self._allowance = estimate_allowance(
                estimate.source,
                estimate.target_bps,
                estimate.sent_bps,
                self.budget.limits.share,
                estimate.loss_fraction,
            )
            self._allowance_at = now
        budget = self.budget
        if self.octets != self._credited:  # the media sent since the last NACK, at once (the
            # same tokens as one on_media per frame: each only adds up to the cap)
            budget.on_media(self.octets - self._credited)
            self._credited = self.octets
        verdict = budget.decide(
            sequence_number,
            size,
            age if age is not None else 0.0,
            self._seam.round_trip_time(),
            now,
            keyframe=keyframe,
            allowance_bps=allowance,
            superseded=superseded,
        )
        if verdict is not Verdict.SEND:
            return False
        sent = self.resend(sequence_number, size, now)
        if not sent:
            return False
        self.retransmissions += 1
        self.rtx_bytes += sent
        if budget.wants_follow_up:
            asyncio.get_running_loop().call_later(
                FOLLOW_UP_AFTER, self._follow_up, sequence_number, size
            )
        return True

    def _follow_up(self, sequence_number: int, size: int) -> None:
        """The second copy of a retransmission (``RetransmitBudget.follow_up``)."""
        if self._closed or self.rewriter is None:
            return
        now = time.monotonic()
        try:
            if self.budget.follow_up(sequence_number, size, now):
                sent = self.resend(sequence_number, size, now)
                self.rtx_bytes += sent
        except Exception:
            self._count_error("follow-up retransmission failed")

    def resend(self, sequence_number: int, size: int, now: float) -> int:
        """Send a packet of the history again (RTX when negotiated), numbered and recorded for
        the estimator like any other: a retransmission, or a probe's padding
        (``relay.rtc.probe_sender``). Returns the bytes sent (0: none)."""
        rewriter, estimator = self.rewriter, self.estimator
        if rewriter is None or self._out is None or self._pair is None:
            return 0  # (before numbering it: a number never sent reads as loss)
        twcc = self._twcc_offset
        transport_seq = None
        if twcc > 0 and estimator is not None:
            transport_seq = estimator.record((size + 2,), now)  # RTX adds the original seq
        packet = rewriter.retransmission(sequence_number, transport_seq, twcc)
        out, pair = self._out, self._pair  # set with the route
        if packet is None or out is None or pair is None:
            return 0
        try:
            out.sendto(protect_rtp(self._seam.srtp(), packet), pair_remote_address(pair))
        except OSError:
            return 0
        except Exception:  # never into aiortc's RTCP loop: it would end the viewer's transport
            self._count_error("retransmission failed")
            return 0
        if estimator is not None:
            estimator.sent(len(packet), now)
        return len(packet)

    @property
    def can_probe(self) -> bool:
        """Probe packets can go out and be measured: RTX and transport-cc negotiated."""
        rewriter = self.rewriter
        return (
            rewriter is not None
            and rewriter.profile.rtx_payload_type is not None
            and self._twcc_offset > 0
            and self.estimator is not None
        )
