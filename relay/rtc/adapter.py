"""The one place that touches aiortc's private attributes (pinned: aiortc >=1.14,<1.17).

Two hooks make encoded forwarding possible:

* ingest tap: the receiver's jitter buffer is replaced, before the first packet, by one that hands
  every depayloaded RTP packet to a callback and never feeds aiortc's decoder thread (which then
  idles until the receiver stops). NACK generation, RTX unwrapping and RTCP stay aiortc's.
* pre-packed sender: the sender's encoder is replaced by one whose ``pack`` returns the payloads a
  frame already carries, and its keyframe hook is redirected to the hub, so viewer PLIs reach the
  anchor instead of a (non-existent) local encoder.
* packetisers: the mixer's encoded program is cut into RTP payloads by aiortc's own H264 and VP8
  packetisers (``H264Encoder._packetize``/``_split_bitstream``, ``Vp8Encoder._packetize``).
* direct sender (the viewers' path): frames skip the sender's RTP task altogether. The negotiated
  parameters are caught in ``send()``, packets are rewritten per viewer (``rtp_rewrite``),
  encrypted with the DTLS transport's SRTP session and written to the nominated ICE pair's UDP
  socket synchronously (``srtp_writer``: a C loop when built); NACKs are answered from our own
  history, and sender reports read our counters. aiortc's RTCP task (SR, RR handling, PLI)
  keeps running; receiver reports' loss is noted on the way (the rendition fallback reads it).

``tests/unit/test_aiortc_adapter.py`` fails loudly if an upgrade moves any of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from aioice.ice import StunProtocol
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

from relay.media.frames import EncodedFrame
from relay.rtc.rtp_rewrite import RtpRewriter, SendProfile, TemplateCache
from relay.rtc.srtp_writer import SrtpWriter, new_srtp_writer

log = logging.getLogger(__name__)

SUPPORTED = ((1, 14), (1, 17))  # [lower, upper)

PacketSink = Callable[[Any, RTCRtpCodecParameters], None]


class AdapterError(RuntimeError):
    """aiortc no longer has the internals this module relies on."""


def _aiortc_version() -> tuple[int, int]:
    major, minor = version("aiortc").split(".")[:2]
    return int(major), int(minor)


def check_version() -> None:
    v = _aiortc_version()
    if not SUPPORTED[0] <= v < SUPPORTED[1]:
        raise AdapterError(f"aiortc {v} is outside the supported range {SUPPORTED}")


class _TapBuffer:
    """Stands in for aiortc's JitterBuffer: forwards packets, never returns a frame."""

    def __init__(self, receiver: RTCRtpReceiver, sink: PacketSink) -> None:
        codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        self._codecs = codecs
        self._sink = sink

    @property
    def capacity(self) -> int:
        return 0

    def add(self, packet: Any) -> tuple[bool, None]:
        codec = self._codecs.get(packet.payload_type)
        if codec is not None:
            self._sink(packet, codec)
        return False, None


def install_ingest_tap(receiver: RTCRtpReceiver, sink: PacketSink) -> None:
    """Route the receiver's depayloaded packets (``packet._data``) to ``sink``; install before
    the first packet (right after the transceiver exists)."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer") or not hasattr(
        receiver, "_RTCRtpReceiver__codecs"
    ):
        raise AdapterError("RTCRtpReceiver internals changed: no jitter buffer / codecs")
    receiver._RTCRtpReceiver__jitter_buffer = _TapBuffer(receiver, sink)


def packet_data(packet: Any) -> bytes:
    """The depayloaded bytes aiortc stores on an RTP packet before its jitter buffer."""
    data: bytes = getattr(packet, "_data", b"")
    return data


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> asyncio.Future[None]:
    """Ask the remote sender for a keyframe (RTCP PLI) through the receiver's RTCP path."""
    return asyncio.ensure_future(receiver._send_rtcp_pli(media_ssrc))


class _PrepackedEncoder:
    """Encoder stand-in for frames that are already RTP payloads."""

    def pack(self, frame: EncodedFrame) -> tuple[list[bytes], int]:
        return list(frame.payloads), frame.timestamp & 0xFFFFFFFF

    def encode(self, *_: object) -> tuple[list[bytes], int]:  # pragma: no cover - never decoded
        raise AdapterError("pre-packed sender was given a raw frame")


def install_prepacked_sender(sender: RTCRtpSender, on_keyframe_request: Callable[[], None]) -> None:
    """Make ``sender`` send EncodedFrames as-is and route PLI/FIR to ``on_keyframe_request``."""
    if not hasattr(sender, "_RTCRtpSender__encoder") or not hasattr(sender, "_send_keyframe"):
        raise AdapterError("RTCRtpSender internals changed: no encoder / keyframe hook")
    sender._RTCRtpSender__encoder = _PrepackedEncoder()
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


def drop_receive_estimator(receiver: RTCRtpReceiver) -> None:
    """Free the bandwidth estimator of a receiver that will never receive (a viewer's sendonly
    transceiver has one too): aiortc gives every video receiver a rate counter of 1,000 bucket
    objects, ~60 % of the objects a viewer costs and that every full GC pass walks."""
    name = "_RTCRtpReceiver__remote_bitrate_estimator"
    if not hasattr(receiver, name):
        raise AdapterError("RTCRtpReceiver internals changed: no remote bitrate estimator")
    setattr(receiver, name, None)


def set_transceiver_codecs(transceiver: Any, codecs: list[RTCRtpCodecParameters]) -> None:
    """Narrow an already-negotiated transceiver's codec list (before the answer is created)."""
    transceiver._codecs = codecs


def packetize_h264(data: bytes) -> list[bytes]:
    """RTP payloads (single NAL, STAP-A, FU-A) of an Annex-B access unit."""
    payloads: list[bytes] = H264Encoder._packetize(H264Encoder._split_bitstream(data))
    return payloads


class Vp8Packetizer:
    """RTP payloads of VP8 frames, with a picture id running across calls."""

    def __init__(self) -> None:
        self.picture_id = 0

    def __call__(self, data: bytes) -> list[bytes]:
        payloads: list[bytes] = Vp8Encoder._packetize(data, self.picture_id)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads


def new_template_cache() -> TemplateCache:
    """One per node: shared by every direct sender it creates."""
    return TemplateCache(current_ntp_time)


def _send_profile(parameters: RTCRtpSendParameters) -> SendProfile:
    primary = parameters.codecs[0]
    if primary.payloadType is None:
        raise AdapterError("negotiated codec has no payload type")
    rtx = next(
        (
            c.payloadType
            for c in parameters.codecs
            if is_rtx(c) and c.parameters.get("apt") == primary.payloadType
        ),
        None,
    )
    return SendProfile(
        payload_type=primary.payloadType,
        mid=parameters.muxId or None,
        extensions=tuple((e.uri, e.id) for e in parameters.headerExtensions),
        rtx_payload_type=rtx,
    )


LOSSY_FRACTION = 0.1
SR_INTERVAL = 0.2  # seconds between updates of the counters aiortc puts in sender reports


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
    ) -> None:
        for name in (
            "send",
            "_retransmit",
            "_send_keyframe",
            "_handle_rtcp_packet",
            "_ssrc",
            "_rtx_ssrc",
        ):
            if not hasattr(sender, name):
                raise AdapterError(f"RTCRtpSender internals changed: no {name}")
        self._sender = sender
        self._cache = cache
        self._on_ready = on_ready
        self._pair: Any = None
        self._sock: socket.socket | None = None
        self._dtls: Any = None
        self._nominated: dict[int, Any] = {}
        self._writer: SrtpWriter | None = None  # sends on self._sock to self._pair
        self._closed = False
        self._template_id = 0
        self._sr_due = 0.0
        self.gso = gso
        self.native = native  # the C send loop when built (relay/rtc/srtp_writer.py)
        self.gso_sends = 0
        self.rewriter: RtpRewriter | None = None
        self.octets = 0
        self.congested = 0
        self.errors = 0
        self.lossy_reports = 0  # receiver reports with fraction lost >= LOSSY_FRACTION
        self.fraction_lost = 0.0
        original_send = sender.send
        original_rtcp = sender._handle_rtcp_packet
        original_stats = sender.getStats

        async def handle_rtcp(packet: Any) -> None:
            if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    if report.ssrc == sender._ssrc:
                        self.fraction_lost = report.fraction_lost / 256
                        if self.fraction_lost >= LOSSY_FRACTION:
                            self.lossy_reports += 1
            await original_rtcp(packet)

        async def send(parameters: RTCRtpSendParameters) -> None:
            first = self.rewriter is None
            if first:
                profile = _send_profile(parameters)
                self._template_id = cache.template_id(profile)
                self.rewriter = RtpRewriter(sender._ssrc, profile, rtx_ssrc=sender._rtx_ssrc)
            await original_send(parameters)
            if first:
                self._on_ready()

        async def get_stats() -> Any:
            self._update_sender_report()
            return await original_stats()

        sender.send = send  # type: ignore[method-assign]
        sender.getStats = get_stats  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]
        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
        sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]

    def _route(self) -> SrtpWriter | None:
        """The send loop for the nominated ICE pair when the transport is up (None otherwise).

        It sends on our own duplicate of the pair's socket descriptor (``self._sock``, to
        ``self._pair``'s remote address): sending on it directly skips asyncio's transport
        layer, and a full send buffer shows as BlockingIOError. The route is kept until the
        nominated pair changes (called per frame and viewer)."""
        dtls = self._dtls
        if dtls is None:
            dtls = self._sender.transport
            if dtls._state != DtlsState.CONNECTED:
                return None
            self._dtls = dtls
            self._nominated = dtls.transport._connection._nominated
        if dtls._state is not DtlsState.CONNECTED or self._closed:
            return None
        pair = self._nominated.get(1)
        if pair is self._pair and pair is not None:
            return self._writer
        if pair is None:
            return None
        protocol = pair.protocol
        if not isinstance(protocol, StunProtocol) or protocol.transport is None:
            return None
        fd = protocol.transport.get_extra_info("socket").fileno()
        if self._sock is not None:
            self._sock.close()
        self._sock = socket.socket(fileno=os.dup(fd))
        self._sock.setblocking(False)
        self._pair = pair
        self._writer = new_srtp_writer(
            dtls._tx_srtp, self._sock, pair.remote_addr, native=self.native
        )
        return self._writer

    def close(self) -> None:
        """Release the duplicated socket (the ICE transport keeps its own)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._pair = None
            self._writer = None

    def send_frame(self, frame: EncodedFrame) -> bool:
        rewriter = self.rewriter
        if rewriter is None:
            return True
        try:
            writer = self._route()
        except Exception:  # e.g. EMFILE duplicating the socket: this viewer loses the frame
            self._count_error("direct route failed")
            return True
        if writer is None:
            return True
        packets = self._cache.packets(frame, rewriter.profile, self._template_id)
        seq, ts = rewriter.assign(packets.templates, frame.timestamp)
        try:
            self.gso_sends += writer.send(
                packets.templates, packets.runs, seq, ts, rewriter.ssrc, self.gso
            )
        except BlockingIOError:  # the socket's send buffer is full: this viewer is behind
            self.congested += 1
            return False
        except Exception:  # an SRTP or socket failure loses this viewer's frame, nobody else's
            self._count_error("direct send failed")
            return True
        if writer.gso_refused and self.gso:
            self.gso = False  # one datagram per call from now on
            log.info("UDP GSO refused on this path: sending datagram by datagram")
        self.octets += frame.size
        if frame.received_at >= self._sr_due:
            self._sr_due = frame.received_at + SR_INTERVAL
            self._update_sender_report(self._cache.ntp)  # the NTP time of this frame's send
        return True

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
        sender = self._sender
        if ntp is not None:
            sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_timestamp = rewriter.last_timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count = rewriter.packets  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count = self.octets  # type: ignore[attr-defined]

    async def _retransmit(self, sequence_number: int) -> None:
        rewriter = self.rewriter
        if rewriter is None or self._route() is None:
            return
        packet = rewriter.retransmission(sequence_number)
        sock, pair = self._sock, self._pair  # set with the route
        if packet is not None and sock is not None and pair is not None:
            with contextlib.suppress(OSError):
                sock.sendto(self._sender.transport._tx_srtp.protect(packet), pair.remote_addr)
