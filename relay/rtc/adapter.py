"""The one place that touches aiortc's and aioice's private attributes (pinned in pyproject.toml).

The hooks that make encoded forwarding possible:

* ingest tap: the receiver's jitter buffer is replaced, before the first packet, by one that hands
  every depayloaded RTP packet to a callback, and aiortc starts no decoder thread for it (the
  ``rtcrtpreceiver`` module's ``threading`` name makes a stand-in for a tapped receiver's; its
  stop ends the remote track as the thread's exit does). RTX unwrapping and RTCP stay aiortc's.
* NACK requests (``install_nack_requests``, ``send_nack``): a video receiver's NACK generator
  is replaced by a callback that returns what to NACK (relay/rtc/nack_requests.py repeats
  requests aiortc would send once), and NACKs go out on its RTCP path.
* simulcast receive (``keep_header_extensions``, ``install_simulcast_receive``): a transceiver
  keeps header extensions aiortc does not negotiate itself (the RTP stream id ones: answer and
  receive parameters both come from ``RTCRtpTransceiver._headerExtensions``); a receiver of
  several layers gets one NACK generator per SSRC (aiortc's one tracks a single sequence space)
  and learns each layer's RTX SSRC from its repaired-rtp-stream-id (``__rtx_ssrc``).
* pre-packed sender: the sender's encoder is replaced by one whose ``pack`` returns the payloads a
  frame already carries, and its keyframe hook is redirected to the hub, so viewer PLIs reach the
  anchor instead of a (non-existent) local encoder.
* packetisers: the mixer's encoded program is cut into RTP payloads by aiortc's own H264 and VP8
  packetisers (``H264Encoder._packetize``/``_split_bitstream``, ``Vp8Encoder._packetize``).
* direct sender seam (``SenderSeam``, for ``relay/rtc/direct_sender.py``, the viewers' path): a
  sender's SSRCs, hooks on its ``send``/``getStats``/RTCP/retransmission/keyframe paths, the DTLS
  transport's SRTP session and nominated ICE pair (aioice), and the sender-report counters.
* transport-cc (``accept_transport_cc``, ``tap_rtcp``): the transport-wide sequence number
  header extension and the ``transport-cc`` rtcp-fb are answered when a viewer offers them
  (aiortc's own lists lack them: the transceivers' negotiated ``_headerExtensions`` and
  ``_codecs`` get them added), and every decrypted RTCP datagram of a transport is shown to a
  callback before aiortc parses it (its parser keeps no transport-cc feedback), which hands
  aiortc only the rest; on the shared port a datagram that starts with transport-cc feedback is
  decrypted and split in the port's read callback instead (``tap_transport_feedback``,
  ``_receive_feedback``: relay/rtc/rtcp_reader.py), without aiortc's receive queue and task.
* header extensions only our send path writes (``accept_header_extension``: the playout delay)
  are answered by adding them to the transceivers' negotiated ``_headerExtensions``.
* RED + ULPFEC (``accept_red_ulpfec``): the transceiver's negotiated ``_codecs`` get the offer's
  red, its rtx and ulpfec appended, so the answer carries them (``relay/media/ulpfec.py``);
  audio RED likewise (``accept_audio_red``: ``relay/media/audio_red.py``).
* sender reports (``SenderSeam.own_reports``/``sender_report``/``send_reports``): a direct
  sender's aiortc RTCP task ends as it starts, and its reports are built as that task builds
  them and sent by the viewer service's one tick for every viewer.
* bench hooks: benchmark processes replace aiortc's H264 encoder for their anchors
  (``use_bench_h264_encoder``) and count a viewer's datagrams before aiortc sees them
  (``divert_ice_datagrams``).
* node certificate (``NodeCertificate``, ``use_certificate``, ``new_peer_connection``): one DTLS
  certificate for all of a node's peer connections (aiortc makes one per RTCPeerConnection),
  its fingerprints and its OpenSSL context (``RTCCertificate._create_ssl_context``) made once,
  set on a new peer connection's ``__certificates`` before any transport exists; the
  ``rtcpeerconnection`` module's ``RTCCertificate`` name hands it to the constructor on the
  constructing thread, so aiortc generates none to throw away.
* lazy receive estimators (``use_lazy_receive_estimators``): the ``rtcrtpreceiver`` module's
  ``RemoteBitrateEstimator`` name builds the real one on a receiver's first packet.
* ICE check bounds (``guard_ice_checks``): a session's ordinary checks start one per interval
  (RFC 8445's Ta) instead of aioice's 20 ms (its connections' ``_check_periodic`` wrapped), and
  it learns a bounded number of peer-reflexive addresses (``request_received`` wrapped).
* one UDP port, ICE-lite (``install_shared_port``; its gathering lists no interfaces), and
  ICE-TCP on one TCP port beside it: each authenticated TCP connection one more StunProtocol
  of the session (``pair_stream`` for the direct sender).
* transport-cc to publishers (``negotiate_transport_cc``, ``tap_transport_sequence``,
  ``send_rtcp``): the transport-wide sequence number extension and ``transport-cc`` feedback
  answered where offered (aiortc drops them), every RTP packet's number seen before routing,
  feedback sent on the receiver's RTCP path (relay/rtc/transport_cc.py).
* consent by traffic (``install_traffic_consent``): aioice's RFC 7675 checks are replaced by a
  silence timeout fed by authenticated STUN and SRTP/SRTCP from the peer (ffmpeg never answers
  consent checks).

Not here but beside it: ``relay/rtc/deferred_imports.py`` hands aiortc and aioice stand-ins for
PyAV and aioice's mDNS module while their packages import (it must run before any aiortc import).

Nothing else in relay/, gateway/ or bench/ touches an aiortc or aioice private name (pylibsrtp's
binding is reached in ``srtp_writer`` and ``rtp_reader``, aiortc's header extension ids in
``rtp_reader``): ``tests/unit/test_private_names.py`` checks that.
``tests/unit/test_aiortc_adapter.py`` fails loudly if an upgrade moves any of these
(``tests/unit/test_candidates.py`` for the ICE check bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import threading
import time
from array import array
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import ICE_COMPLETED, CandidatePair, StunProtocol
from aioice.utils import random_string
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc import clock as aiortc_clock
from aiortc import rtcpeerconnection as aiortc_rtcpeerconnection
from aiortc import rtcrtpreceiver as aiortc_rtcrtpreceiver
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rate import RemoteBitrateEstimator as _RemoteBitrateEstimator
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint, SRTPProtectionProfile
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    is_rtcp,
    pack_remb_fci,
    unwrap_rtx,
)
from OpenSSL import SSL

from relay.media.cc_feedback import FMT_TRANSPORT_CC, RTCP_RTPFB
from relay.media.consent import ConsentTimer
from relay.media.frames import EncodedFrame
from relay.rtc.candidates import CandidatePolicy
from relay.rtc.mux_table import is_stun
from relay.rtc.rtcp_reader import RtcpReader, laneable, new_rtcp_reader
from relay.rtc.rtp_reader import (
    LANE_DEPAYLOADERS,
    RtpReader,
    depayloader,
    lane_reader,
    lane_statistics,
    new_rtp_reader,
    new_stream_statistics,
)

log = logging.getLogger(__name__)

# [lower, upper) of each package whose internals this module (and srtp_writer) reaches; the same
# ranges are pinned in pyproject.toml.
SUPPORTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "aiortc": ((1, 14), (1, 17)),
    "aioice": ((0, 13), (0, 14)),
    "pylibsrtp": ((1, 0), (1, 1)),
}

PacketSink = Callable[[Any, RTCRtpCodecParameters], None]


class AdapterError(RuntimeError):
    """aiortc no longer has the internals this module relies on."""


def _version(package: str) -> tuple[int, int]:
    major, minor = version(package).split(".")[:2]
    return int(major), int(minor)


def check_version() -> None:
    for package, (lower, upper) in SUPPORTED.items():
        v = _version(package)
        if not lower <= v < upper:
            raise AdapterError(f"{package} {v} is outside the supported range [{lower}, {upper})")


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


_RECEIVER_STATE = (
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__active_ssrc",
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_enabled",
    "_send_rtcp",
    "_send_rtcp_nack",
)


LaneTarget = Callable[[int, RTCRtpCodecParameters], "tuple[Callable[..., Any], LaneFrames] | None"]
"""``lane(ssrc, codec)``: the reorder core's ``push`` a C lane of the receive path feeds that
SSRC's packets to, and what it hands the core's output and the counts to; None: no lane (the
sink must see every packet)."""
LaneFrames = Callable[[Any, int, int, int, float], None]
"""``(core output or None, packets, payload bytes, last sequence number, now)``."""


def install_ingest_tap(
    receiver: RTCRtpReceiver, sink: PacketSink, lane: LaneTarget | None = None
) -> None:
    """Route the receiver's depayloaded packets (``packet._data``) to ``sink``; install before
    the first packet (right after the transceiver exists). The receiver's per-packet handling
    becomes ``_tapped_rtp_handler``'s. ``lane``: where a C lane of the receive path (on the
    shared port: ``_offer_lane``) may take the SSRC's plain in-order packets instead."""
    for name in _RECEIVER_STATE:
        if not hasattr(receiver, name):
            raise AdapterError(f"RTCRtpReceiver internals changed: no {name}")
    receiver._RTCRtpReceiver__jitter_buffer = _TapBuffer(receiver, sink)  # type: ignore[attr-defined]
    receiver._handle_rtp_packet = _tapped_rtp_handler(receiver, sink, lane)  # type: ignore[method-assign, assignment]
    _skip_decoder_thread(receiver)


class _NoDecoderQueue(queue.Queue[Any]):
    """A tapped receiver's decoder queue: nothing is ever decoded, so nothing is kept."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        pass


class _NoDecoderThread:
    """Stands in for a tapped receiver's decoder thread (aiortc starts one per receiver, which
    would idle with its stack until the receiver stops). Stopping it ends the remote track as
    the thread's exit does: ``None`` on the track's queue, from the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, track_queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._track_queue = track_queue
        self._ended = False

    def start(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._loop.call_soon_threadsafe(self._track_queue.put_nowait, None)


class _ReceiverThreading:
    """The ``threading`` name of aiortc's ``rtcrtpreceiver`` module: ``Thread`` for a decoder
    whose queue is a ``_NoDecoderQueue`` is a ``_NoDecoderThread``; the rest is ``threading``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)

    @staticmethod
    def Thread(*args: Any, **kwargs: Any) -> Any:
        worker_args = kwargs.get("args", ())
        if len(worker_args) >= 3 and isinstance(worker_args[1], _NoDecoderQueue):
            return _NoDecoderThread(worker_args[0], worker_args[2])
        return threading.Thread(*args, **kwargs)


def _skip_decoder_thread(receiver: RTCRtpReceiver) -> None:
    """No decoder thread for a tapped receiver: its queue becomes a ``_NoDecoderQueue`` (before
    ``receive`` starts the thread), which the module's ``threading`` name recognises."""
    name = "_RTCRtpReceiver__decoder_queue"
    if (
        not hasattr(receiver, name)
        or getattr(receiver, "_RTCRtpReceiver__decoder_thread", 0) is not None
        or getattr(aiortc_rtcrtpreceiver, "threading", None) is None
    ):
        raise AdapterError("RTCRtpReceiver internals changed: decoder queue and thread")
    if not isinstance(getattr(aiortc_rtcrtpreceiver, "threading"), _ReceiverThreading):  # noqa: B009
        setattr(aiortc_rtcrtpreceiver, "threading", _ReceiverThreading())  # noqa: B010
    setattr(receiver, name, _NoDecoderQueue())


ACTIVE_SSRC_REFRESH = 1.0
"""Seconds between refreshes of a tapped receiver's active-SSRC time (its
``getSynchronizationSources`` lists the SSRCs of the last 10 s)."""


def _tapped_rtp_handler(
    receiver: RTCRtpReceiver, sink: PacketSink, lane: LaneTarget | None = None
) -> Callable[[Any, int], Coroutine[Any, Any, None]]:
    """aiortc's ``RTCRtpReceiver._handle_rtp_packet`` (1.14-1.16) for a receiver whose packets go
    to ``sink``: the same REMB, RTCP statistics, RTX unwrapping, NACKs and depayloading, then
    ``sink`` in place of the jitter buffer and the decoder queue it never feeds. The changes:
    the active-SSRC time (an aware datetime) is refreshed once a second, not per packet;
    payloads are depayloaded by ``rtp_reader.depayloader`` and the RTCP statistics kept by
    ``rtp_reader.new_stream_statistics`` (both in C when built). State is read from the
    receiver per packet (simulcast and others replace the NACK generator)."""
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    streams: dict[int, Any] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    rtx_ssrc: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
    refreshed: dict[int, float] = {}
    # per codec object (by id, the object kept to check): whether it is RTX, and its
    # depayloader (rtp_reader's); aiortc's is_rtx and .name split the MIME type at every packet
    kinds: dict[int, tuple[RTCRtpCodecParameters, bool, Callable[[bytes], bytes]]] = {}
    clock = time.monotonic

    def kind_of(codec: RTCRtpCodecParameters) -> tuple[bool, Callable[[bytes], bytes]]:
        known = kinds.get(id(codec))
        if known is None or known[0] is not codec:
            if len(kinds) > 64:  # codec objects of earlier negotiations
                kinds.clear()
            known = kinds[id(codec)] = (codec, is_rtx(codec), depayloader(codec.name) or bytes)
        return known[1], known[2]

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
            if rtcp_ssrc is not None and remb is not None:
                await receiver._send_rtcp(
                    RtcpPsfbPacket(
                        fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb)
                    )
                )
        ssrc = packet.ssrc
        now = clock()
        if now - refreshed.get(ssrc, -ACTIVE_SSRC_REFRESH) >= ACTIVE_SSRC_REFRESH:
            refreshed[ssrc] = now
            active[ssrc] = aiortc_clock.current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        stream = streams.get(ssrc)
        if stream is None:
            stream = streams[ssrc] = new_stream_statistics(codec.clockRate)
        stream.add(packet)
        rtx, unpack = kind_of(codec)
        if rtx:
            original = rtx_ssrc.get(ssrc)
            apt = codec.parameters.get("apt")
            if original is None or len(packet.payload) < 2 or not isinstance(apt, int):
                return
            if apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original)
            codec = codecs[apt]
            unpack = kind_of(codec)[1]
        nacks = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if nacks is not None and nacks.add(packet):
            await receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing))
        try:
            packet._data = unpack(packet.payload) if packet.payload else b""
        except ValueError:
            return
        sink(packet, codec)

    def lane_for(packet: Any, reader: RtpReader, dtls: Any, timer: ConsentTimer | None) -> bool:
        """Give ``packet``'s SSRC (just handled by ``handle``) a C lane on ``reader`` when
        ``handle`` would do for its next plain in-order packet nothing the lane does not: a
        media (not RTX) codec, C statistics and depayloader, no NACK generator but ours, and
        a sink that takes a lane (``lane``). What ``handle`` does per packet besides (the
        active-SSRC time, the transport's counts, consent) the lane's handler does per call."""
        ssrc = packet.ssrc
        codec = codecs.get(packet.payload_type)
        if lane is None or codec is None or not receiver._enabled:
            return False
        rtx, unpack = kind_of(codec)
        depay = LANE_DEPAYLOADERS.get(unpack)
        stream = streams.get(ssrc)
        if rtx or depay is None or not lane_statistics(stream):
            return False
        nacks = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        trackers: dict[int, Any] | None = None
        tracker = None
        if nacks is not None:
            trackers = getattr(nacks, "trackers", None) if type(nacks) is _RequestedNacks else None
            tracker = None if trackers is None else trackers.get(ssrc)
            if tracker is None:
                return False
        target = lane(ssrc, codec)
        if target is None:
            return False
        push, frames = target
        pt = packet.payload_type
        due = 0.0  # the next once-a-second bookkeeping

        def handler(
            out: Any, packets: int, size: int, last_seq: int, now: float, rx: int, rx_n: int
        ) -> None:
            """Per frame (and every 32 packets): the counts, then the frame; once a second
            what ``handle`` refreshes at that rate anyway (the active-SSRC time), and consent
            (a 30 s timeout: a second late is nothing) and whether the lane still holds."""
            nonlocal due
            try:
                dtls._RTCDtlsTransport__rx_bytes += rx
                dtls._RTCDtlsTransport__rx_packets += rx_n
                if now >= due:
                    due = now + ACTIVE_SSRC_REFRESH
                    refreshed[ssrc] = now
                    active[ssrc] = aiortc_clock.current_datetime()
                    if timer is not None:
                        timer.seen(now)
                    if codecs.get(pt) is not codec:
                        reader.lane_remove(ssrc)
                if not receiver._enabled:
                    reader.lane_remove(ssrc)
                    return  # (aiortc's handling drops a stopped receiver's packets)
                frames(out, packets, size, last_seq, now)
            except Exception:
                log.exception("a lane's handler failed")

        added: bool = reader.lane_add(ssrc, pt, depay, stream, push, trackers, tracker, handler)
        return added

    handle._stagecast_lane = lane_for  # type: ignore[attr-defined]
    return handle


def packet_data(packet: Any) -> bytes:
    """The depayloaded bytes aiortc stores on an RTP packet before its jitter buffer."""
    data: bytes = getattr(packet, "_data", b"")
    return data


def keep_header_extensions(
    pc: RTCPeerConnection, kind: str, extensions: Sequence[tuple[int, str]]
) -> None:
    """After ``setRemoteDescription``: ``pc``'s ``kind`` transceivers negotiate these offered
    extensions (id, uri) too, in the answer and in what their receivers parse (aiortc keeps
    only the ones it sends itself)."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind != kind:
            continue
        have = getattr(transceiver, "_headerExtensions", None)
        if not isinstance(have, list):
            raise AdapterError("RTCRtpTransceiver internals changed: no _headerExtensions")
        uris = {ext.uri for ext in have}
        ids = {ext.id for ext in have}
        for ext_id, uri in extensions:
            if uri not in uris and ext_id not in ids:
                have.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


class _SsrcNacks:
    """Stands in for aiortc's NackGenerator on a receiver of several SSRCs: one per SSRC
    (``missing`` is that of the SSRC last added, which aiortc reads right after ``add``)."""

    def __init__(self, limit: int = 8) -> None:
        self._by_ssrc: dict[int, NackGenerator] = {}
        self._limit = limit
        self.missing: set[int] = set()

    def add(self, packet: Any) -> bool:
        generator = self._by_ssrc.get(packet.ssrc)
        if generator is None:
            if len(self._by_ssrc) >= self._limit:  # SSRCs a publisher no longer uses
                self._by_ssrc.pop(next(iter(self._by_ssrc)))
            generator = self._by_ssrc[packet.ssrc] = NackGenerator()
        missed: bool = generator.add(packet)
        self.missing = generator.missing
        return missed


class _RequestedNacks:
    """Stands in for aiortc's NackGenerator: aiortc calls ``add`` with every packet (RTX
    unwrapped) and, when it returns True, NACKs ``missing`` for that packet's SSRC."""

    def __init__(
        self, on_packet: Callable[[int, int], list[int]], trackers: dict[int, Any] | None = None
    ) -> None:
        self._on_packet = on_packet
        self.trackers = trackers  # NackTrackers by SSRC, for the receive path's C lanes
        self.missing: list[int] = []

    def add(self, packet: Any) -> bool:
        self.missing = self._on_packet(packet.ssrc, packet.sequence_number)
        return bool(self.missing)


def install_nack_requests(
    receiver: RTCRtpReceiver,
    on_packet: Callable[[int, int], list[int]],
    trackers: dict[int, Any] | None = None,
) -> None:
    """Replace a video receiver's NACK generator (also ``install_simulcast_receive``'s):
    ``on_packet(ssrc, sequence number)`` sees every packet and returns what to NACK at once;
    repeats go out with ``send_nack``. ``trackers``: the ``NackTracker`` of each SSRC that
    ``on_packet`` keeps (a C lane of the receive path takes a packet that is next in order with
    nothing missing itself, as ``NackTracker.packet`` would; None: no lane)."""
    name = "_RTCRtpReceiver__nack_generator"
    if not hasattr(receiver, name) or not hasattr(receiver, "_send_rtcp_nack"):
        raise AdapterError("RTCRtpReceiver internals changed: no NACK generator")
    setattr(receiver, name, _RequestedNacks(on_packet, trackers))


def send_nack(receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> asyncio.Task[None]:
    """Ask the remote sender to resend ``lost`` (RTCP NACK) through the receiver's RTCP path;
    a transport that is closing drops it."""

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            await receiver._send_rtcp_nack(media_ssrc, lost)

    return asyncio.get_running_loop().create_task(send())


def install_simulcast_receive(
    receiver: RTCRtpReceiver, media_ssrc: Callable[[str], int | None]
) -> None:
    """Make a video receiver take several layers (SSRCs): NACKs per SSRC, and an RTX packet
    from an SSRC aiortc does not know unwrapped onto the media SSRC of the layer its
    repaired-rtp-stream-id names (``media_ssrc(rid)``; Chromium signals no SSRCs with rids)."""
    for name in (
        "_RTCRtpReceiver__nack_generator",
        "_RTCRtpReceiver__rtx_ssrc",
        "_RTCRtpReceiver__codecs",
        "_handle_rtp_packet",
    ):
        if not hasattr(receiver, name):
            raise AdapterError(f"RTCRtpReceiver internals changed: no {name}")
    receiver._RTCRtpReceiver__nack_generator = _SsrcNacks()  # type: ignore[attr-defined]
    rtx_ssrc: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    original = receiver._handle_rtp_packet

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        if packet.ssrc not in rtx_ssrc:
            rid = packet.extensions.repaired_rtp_stream_id
            codec = codecs.get(packet.payload_type)
            if rid is not None and codec is not None and is_rtx(codec):
                ssrc = media_ssrc(rid)
                if ssrc is not None:
                    rtx_ssrc[packet.ssrc] = ssrc
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


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


class _LazyEstimator:
    """Stands in for aiortc's RemoteBitrateEstimator until a packet arrives: a viewer's
    sendonly video receiver never gets one, and building the real one (a rate counter of 1,000
    bucket objects) cost ~0.3 ms of each join, and a young-generation GC pass per few joins."""

    __slots__ = ("_real",)

    def __init__(self) -> None:
        self._real: Any = None

    def add(self, *args: Any, **kwargs: Any) -> Any:
        real = self._real
        if real is None:
            real = self._real = _RemoteBitrateEstimator()
        return real.add(*args, **kwargs)


def use_lazy_receive_estimators() -> None:
    """Make every video receiver of THIS process build its receive-side bandwidth estimator
    on its first RTP packet instead of at construction (idempotent; behaviour unchanged for a
    receiver that receives)."""
    if getattr(aiortc_rtcrtpreceiver, "RemoteBitrateEstimator", None) is None:
        raise AdapterError("aiortc internals changed: rtcrtpreceiver.RemoteBitrateEstimator")
    setattr(aiortc_rtcrtpreceiver, "RemoteBitrateEstimator", _LazyEstimator)  # noqa: B010


def drop_receive_estimator(receiver: RTCRtpReceiver) -> None:
    """Free the bandwidth estimator of a receiver that will never receive (a viewer's sendonly
    transceiver has one too): aiortc gives every video receiver a rate counter of 1,000 bucket
    objects, most of the objects a viewer costs, which every full GC pass walks."""
    name = "_RTCRtpReceiver__remote_bitrate_estimator"
    if not hasattr(receiver, name):
        raise AdapterError("RTCRtpReceiver internals changed: no remote bitrate estimator")
    setattr(receiver, name, None)


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


class SenderSeam:
    """DirectSender's hold on one RTCRtpSender's internals (relay/rtc/direct_sender.py): its SSRCs,
    hooks on its send, stats, RTCP, retransmission and keyframe paths, the DTLS transport's SRTP
    session and nominated ICE pair, and the counters aiortc's sender reports read."""

    def __init__(self, sender: RTCRtpSender) -> None:
        for name in (
            "send",
            "_retransmit",
            "_send_keyframe",
            "_handle_rtcp_packet",
            "_ssrc",
            "_rtx_ssrc",
            "_RTCRtpSender__rtt",
        ):
            if not hasattr(sender, name):
                raise AdapterError(f"RTCRtpSender internals changed: no {name}")
        self.sender = sender
        self.ssrc: int = sender._ssrc
        self.rtx_ssrc: int = sender._rtx_ssrc
        self._dtls: Any = None
        self._nominated: dict[int, Any] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def install(
        self,
        *,
        on_negotiated: Callable[[RTCRtpSendParameters], None],
        on_started: Callable[[], None],
        on_rtcp: Callable[[Any], None],
        before_stats: Callable[[], None],
        retransmit: Callable[[int], Coroutine[Any, Any, None]],
        on_keyframe_request: Callable[[], None],
    ) -> None:
        """``on_negotiated`` sees the parameters of the first ``send()`` before aiortc starts its
        tasks, ``on_started`` runs once they have; ``on_rtcp`` sees every RTCP packet before
        aiortc handles it; ``retransmit`` answers NACKs in place of aiortc's."""
        sender = self.sender
        original_send = sender.send
        original_rtcp = sender._handle_rtcp_packet
        original_stats = sender.getStats
        first = [True]

        async def send(parameters: RTCRtpSendParameters) -> None:
            started = first[0]
            if started:
                first[0] = False
                on_negotiated(parameters)
            await original_send(parameters)
            if started:
                on_started()

        async def handle_rtcp(packet: Any) -> None:
            on_rtcp(packet)
            await original_rtcp(packet)

        async def get_stats() -> Any:
            before_stats()
            return await original_stats()

        sender.send = send  # type: ignore[method-assign]
        sender.getStats = get_stats  # type: ignore[method-assign]
        sender._retransmit = retransmit  # type: ignore[method-assign, assignment]
        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
        sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]

    def own_reports(self) -> None:
        """aiortc's RTCP task for this sender (a task per sender, two per viewer, each waking
        every 0.5-1.5 s to send one sender report) ends as soon as it starts: the sender's
        reports are built by ``sender_report`` and sent by ``send_reports``, from one node-wide
        tick (relay/rtc/viewers.py). Call before ``send()``. Its BYE at the end is not sent (the
        transport closes with the session)."""
        sender = self.sender
        for name in (
            "_run_rtcp",
            "_RTCRtpSender__rtcp_started",
            "_RTCRtpSender__rtcp_exited",
            "_RTCRtpSender__lsr",
            "_RTCRtpSender__lsr_time",
            "_RTCRtpSender__cname",
            "_RTCRtpSender__ntp_timestamp",
            "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__packet_count",
            "_RTCRtpSender__octet_count",
        ):
            if not hasattr(sender, name):
                raise AdapterError(f"RTCRtpSender internals changed: no {name}")

        async def no_rtcp_task() -> None:  # what stop() waits for, at once
            sender._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]

        sender._run_rtcp = no_rtcp_task  # type: ignore[method-assign]

    def sender_report(self) -> bytes:
        """The sender report (SR, and an SDES with the CNAME once negotiated) aiortc's RTCP task
        would send now, from the counters ``set_report_counters`` keeps; notes its LSR as that
        task does, so the viewer's receiver reports give the round trip."""
        sender: Any = self.sender
        ntp: int = sender._RTCRtpSender__ntp_timestamp
        info = RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=sender._RTCRtpSender__rtp_timestamp,
            packet_count=sender._RTCRtpSender__packet_count & 0xFFFFFFFF,
            octet_count=sender._RTCRtpSender__octet_count & 0xFFFFFFFF,
        )
        report = bytes(RtcpSrPacket(ssrc=self.ssrc, sender_info=info))
        sender._RTCRtpSender__lsr = (ntp >> 16) & 0xFFFFFFFF
        sender._RTCRtpSender__lsr_time = time.time()
        cname: str | None = sender._RTCRtpSender__cname
        if cname is not None:
            chunk = RtcpSourceInfo(ssrc=self.ssrc, items=[(1, cname.encode("utf8"))])
            report += bytes(RtcpSdesPacket(chunks=[chunk]))
        return report

    def send_reports(self, payload: bytes) -> bool:
        """Send the compound RTCP ``payload`` (this transport's senders' reports) now, as
        aiortc's ``_send_rtcp`` does; False when the transport is not connected."""
        dtls = self.sender.transport
        if dtls is None or dtls._state is not DtlsState.CONNECTED:
            return False

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                await dtls._send_rtp(payload)

        task = run_now(send())
        if task is not None:  # it suspended (it does not on a UDP pair): kept till done
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return True

    def nominated_pair(self) -> Any | None:
        """The ICE candidate pair in use once DTLS is connected; None before and after that.
        Called per frame and viewer: the transport's pair table is looked up once."""
        dtls = self._dtls
        if dtls is None:
            dtls = self.sender.transport
            if dtls._state != DtlsState.CONNECTED:
                return None
            self._dtls = dtls
            self._nominated = dtls.transport._connection._nominated
        if dtls._state is not DtlsState.CONNECTED:
            return None
        return self._nominated.get(1)

    def round_trip_time(self) -> float | None:
        """aiortc's smoothed round trip to the viewer in seconds, from its receiver reports
        (None until one has answered a sender report)."""
        rtt: float | None = getattr(self.sender, "_RTCRtpSender__rtt", None)
        return rtt

    def srtp(self) -> Any:
        """The DTLS transport's outgoing SRTP session (a pylibsrtp Session)."""
        return self.sender.transport._tx_srtp

    def set_report_counters(
        self, packets: int, octets: int, ntp: int | None = None, rtp_timestamp: int = 0
    ) -> None:
        """The counters (and with ``ntp`` the NTP/RTP pair of the frame just sent) that aiortc's
        sender reports and ``getStats`` read."""
        sender = self.sender
        if ntp is not None:
            sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]


def pair_socket(pair: Any) -> socket.socket | None:
    """The UDP socket an aioice candidate pair sends on (None when it is not a UDP pair or its
    transport is gone)."""
    protocol = pair.protocol
    if not isinstance(protocol, StunProtocol) or protocol.transport is None:
        return None
    sock: socket.socket = protocol.transport.get_extra_info("socket")
    return sock


def pair_remote_address(pair: Any) -> tuple[str, int]:
    address: tuple[str, int] = pair.remote_addr
    return address


# -- transport-cc ---------------------------------------------------------------------------------
def accept_transport_cc(pc: RTCPeerConnection, uris: tuple[str, ...]) -> bool:
    """Answer the transport-wide sequence number extension (any of ``uris``, with the offer's
    id) and the ``transport-cc`` rtcp-fb of each codec that offers it, on each m-line of
    ``pc``'s remote offer that has them; only when all m-lines share one transport (BUNDLE:
    the sequence numbers are transport-wide). Call after ``setRemoteDescription``, before
    the answer. True when it was accepted on some m-line."""
    description = _remote_description(pc)
    if description is None:
        return False
    transceivers = {t.mid: t for t in pc.getTransceivers() if t.mid is not None}
    if not transceivers or len(ice_transports(pc)) != 1:
        return False
    plans: list[tuple[Any, RTCRtpHeaderExtensionParameters, set[int | None]]] = []
    for media in description.media:
        transceiver = transceivers.get(media.rtp.muxId)
        if transceiver is None:
            continue
        ext = next((e for e in media.rtp.headerExtensions if e.uri in uris), None)
        if ext is None:
            continue  # Firefox offers it on video only: its audio is not numbered
        fb = {
            c.payloadType
            for c in media.rtp.codecs
            if any(f.type == "transport-cc" for f in c.rtcpFeedback)
        }
        plans.append((transceiver, ext, fb))
    if not plans:
        return False
    for transceiver, ext, fb in plans:
        if not hasattr(transceiver, "_headerExtensions") or not hasattr(transceiver, "_codecs"):
            raise AdapterError("RTCRtpTransceiver internals changed: no _headerExtensions/_codecs")
        extensions: list[RTCRtpHeaderExtensionParameters] = transceiver._headerExtensions
        if all(e.uri != ext.uri for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext.id, uri=ext.uri))
        for codec in transceiver._codecs:
            feedback: list[RTCRtcpFeedback] = codec.rtcpFeedback
            if codec.payloadType in fb and all(f.type != "transport-cc" for f in feedback):
                feedback.append(RTCRtcpFeedback(type="transport-cc"))
    return True


FEC_CODECS = ("red", "ulpfec")


def _offered_codecs(
    pc: RTCPeerConnection, kind: str
) -> Iterator[tuple[Any, list[RTCRtpCodecParameters]]]:
    """(offered m-line, its transceiver's negotiated ``_codecs``) for each ``kind`` section of
    ``pc``'s remote offer: codecs appended there are answered (aiortc writes its answer, and
    the senders' parameters, from that list)."""
    description = _remote_description(pc)
    if description is None:
        return
    transceivers = {t.mid: t for t in pc.getTransceivers() if t.mid is not None}
    for media in description.media:
        transceiver = transceivers.get(media.rtp.muxId)
        if media.kind != kind or transceiver is None:
            continue
        if not hasattr(transceiver, "_codecs"):
            raise AdapterError("RTCRtpTransceiver internals changed: no _codecs")
        yield media, transceiver._codecs


def accept_red_ulpfec(pc: RTCPeerConnection) -> bool:
    """Answer ``red`` and ``ulpfec`` (and the ``rtx`` whose apt is the offer's RED) on the video
    m-line when the remote offer has both, with the offer's payload types, after the section's
    own codecs (the first stays the media codec). aiortc knows neither, so it answers without
    them; libwebrtc's receiver turns its ULPFEC decoder on only when both are negotiated
    (``relay/media/ulpfec.py``). Call after ``setRemoteDescription``, before the answer. True
    when they were added."""
    for media, codecs in _offered_codecs(pc, "video"):
        found = {c.name.lower(): c for c in media.rtp.codecs if c.name.lower() in FEC_CODECS}
        if len(found) != len(FEC_CODECS) or any(c.clockRate != 90000 for c in found.values()):
            continue
        if not codecs or any(c.name.lower() in FEC_CODECS for c in codecs):
            continue
        red = found["red"].payloadType
        taken = {c.payloadType for c in codecs}
        if red in taken or found["ulpfec"].payloadType in taken:
            continue
        added = [RTCRtpCodecParameters(mimeType="video/red", clockRate=90000, payloadType=red)]
        rtx = next(
            (c for c in media.rtp.codecs if is_rtx(c) and c.parameters.get("apt") == red), None
        )
        if rtx is not None and rtx.payloadType not in taken:
            added.append(
                RTCRtpCodecParameters(
                    mimeType="video/rtx",
                    clockRate=90000,
                    payloadType=rtx.payloadType,
                    parameters={"apt": red},
                )
            )
        added.append(
            RTCRtpCodecParameters(
                mimeType="video/ulpfec",
                clockRate=90000,
                payloadType=found["ulpfec"].payloadType,
            )
        )
        codecs.extend(added)
        return True
    return False


def accept_audio_red(pc: RTCPeerConnection) -> bool:
    """Answer ``red/48000/2`` on the audio m-line when the remote offer has it for Opus (fmtp
    ``111/111``: the answer's Opus payload type, as Chromium offers it), with the offer's
    payload type, after Opus (which stays first: what the anchor sends). aiortc knows no RED
    and answers without it (``relay/media/audio_red.py``). Call after
    ``setRemoteDescription``, before the answer. True when it was added."""
    for media, codecs in _offered_codecs(pc, "audio"):
        if not codecs or codecs[0].name.lower() != "opus" or codecs[0].payloadType is None:
            continue
        if any(c.name.lower() == "red" for c in codecs):
            continue
        opus = codecs[0].payloadType
        red = next(
            (
                c
                for c in media.rtp.codecs
                if c.name.lower() == "red"
                and c.clockRate == 48000
                and all(b == str(opus) for p in c.parameters for b in p.split("/"))
            ),
            None,
        )
        if red is None or red.payloadType in {c.payloadType for c in codecs}:
            continue
        codecs.append(
            RTCRtpCodecParameters(
                mimeType="audio/red",
                clockRate=48000,
                channels=2,
                payloadType=red.payloadType,
                parameters={f"{opus}/{opus}": None},
            )
        )
        return True
    return False


def accept_header_extension(pc: RTCPeerConnection, uri: str) -> bool:
    """Answer the header extension ``uri`` (with the offer's id) on each m-line of ``pc``'s
    remote offer that has it (aiortc answers only those it knows: HEADER_EXTENSIONS). For
    extensions only our own send path writes (the playout delay: relay/rtc/rtp_rewrite.py).
    Call after ``setRemoteDescription``, before the answer. True when accepted somewhere."""
    description = _remote_description(pc)
    if description is None:
        return False
    transceivers = {t.mid: t for t in pc.getTransceivers() if t.mid is not None}
    accepted = False
    for media in description.media:
        transceiver = transceivers.get(media.rtp.muxId)
        ext = next((e for e in media.rtp.headerExtensions if e.uri == uri), None)
        if transceiver is None or ext is None:
            continue
        if not hasattr(transceiver, "_headerExtensions"):
            raise AdapterError("RTCRtpTransceiver internals changed: no _headerExtensions")
        extensions: list[RTCRtpHeaderExtensionParameters] = transceiver._headerExtensions
        if all(e.uri != uri for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext.id, uri=uri))
        accepted = True
    return accepted


def _remote_description(pc: RTCPeerConnection) -> Any:
    """aiortc's parsed remote description (``pc.remoteDescription`` writes it out as text,
    which would then be parsed again)."""
    name = "_RTCPeerConnection__remoteDescription"
    if not hasattr(pc, name):
        raise AdapterError("RTCPeerConnection internals changed: no __remoteDescription")
    return getattr(pc, name)()


def tap_rtcp(pc: RTCPeerConnection, on_rtcp: Callable[[bytes], bytes]) -> None:
    """Show ``on_rtcp`` every RTCP datagram (decrypted, compound) ``pc``'s transports receive,
    before aiortc parses it; aiortc gets what ``on_rtcp`` returns (nothing when empty).
    ``on_rtcp`` must not raise. Install before ``install_traffic_consent`` (whose hook then
    sees every datagram first)."""
    for dtls, _ in ice_transports(pc):
        if not hasattr(dtls, "_handle_rtcp_data"):
            raise AdapterError("RTCDtlsTransport internals changed: no _handle_rtcp_data")
        handle_rtcp = dtls._handle_rtcp_data

        async def rtcp(data: bytes, handle_rtcp: Any = handle_rtcp) -> None:
            rest = on_rtcp(data)
            if rest:
                await handle_rtcp(rest)

        dtls._handle_rtcp_data = rtcp


FeedbackHandler = Callable[[tuple[bytes, ...]], None]


@dataclass(frozen=True, slots=True)
class FeedbackLane:
    """Where a feedback lane takes a viewer's lone transport-cc datagrams (rtcp_reader.py's
    ``bind``): the estimator's ``lane()`` and what counts the datagrams it took."""

    state: Any
    params: array[float]
    taken: Callable[[bytes, float, int, int], None]
    counted: Callable[[int], None]


def tap_transport_feedback(
    pc: RTCPeerConnection, on_feedback: FeedbackHandler, lane: FeedbackLane | None = None
) -> None:
    """On the shared UDP port, a datagram of ``pc``'s whose first packet is transport-cc
    feedback is decrypted and split in the port's read callback (``_receive_feedback``, when
    nothing of the session waits in its queue): ``on_feedback`` gets its transport-cc FCIs at
    once, and aiortc (through ``tap_rtcp``'s and the consent wrappers) only the rest, if any.
    Other datagrams (and everything off the shared port) take aiortc's path: ``tap_rtcp``'s
    callback must take transport-cc feedback too. ``on_feedback`` must not raise. With ``lane``
    (and the C reader), the first such datagram also makes the session's SRTCP reader a lane of
    the port's recvmmsg loop (``_feedback_lane``): lone feedback then reaches ``lane.state``
    without Python, and ``on_feedback`` gets only what the lane leaves."""
    for dtls, _ in ice_transports(pc):
        for name in ("_rx_srtp", "_state", "_handle_rtcp_data", "_RTCDtlsTransport__rx_bytes"):
            if not hasattr(dtls, name):
                raise AdapterError(f"RTCDtlsTransport internals changed: no {name}")
        dtls._stagecast_feedback = on_feedback
        dtls._stagecast_feedback_lane = lane


# -- bench hooks ----------------------------------------------------------------------------------
class _BenchDtls:
    """What ``_receive_feedback`` and ``_feedback_lane`` read of aiortc's RTCDtlsTransport."""

    def __init__(self, srtp: Any, connection: Any) -> None:
        self._rx_srtp = srtp
        self._state = DtlsState.CONNECTED
        self._RTCDtlsTransport__rx_bytes = 0
        self._RTCDtlsTransport__rx_packets = 0
        self.transport = SimpleNamespace(_connection=connection)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        pass


def bench_feedback_session(
    port: Any,
    ufrag: str,
    password: str,
    srtp: Any,
    on_feedback: FeedbackHandler,
    lane: FeedbackLane | None,
) -> None:
    """Register on the shared ``port`` a session whose SRTCP (decrypted with ``srtp``) takes
    the node's feedback paths (``_SessionSink``, ``_receive_feedback``, the feedback lane when
    ``lane``), with stand-ins for aiortc's DTLS transport and aioice's connection holding what
    those paths read (no handshake: the keys are given). For bench/feedback_port.py only."""
    connection = SimpleNamespace(_queue=asyncio.Queue(), data_received=lambda *_: None)
    transport = _PortTransport(port, ufrag, None, "")  # type: ignore[arg-type]
    connection._protocols = [SimpleNamespace(transport=transport)]
    dtls: Any = _BenchDtls(srtp, connection)
    dtls._stagecast_feedback = on_feedback
    dtls._stagecast_feedback_lane = lane
    protocol: Any = SimpleNamespace(local_candidate=SimpleNamespace(component=1))
    port.register(ufrag, password, _SessionSink(connection, {"": protocol}, dtls))


def use_bench_h264_encoder(
    preset: str, kbps: int, on_payloads: Callable[[list[bytes]], None]
) -> None:
    """Replace, in THIS process, the H264 encoder aiortc's senders get by one with an x264
    ``preset``, constant bitrate ``kbps`` (``nal-hrd=cbr`` with filler) and REMB ignored; every
    encoded frame's payloads go to ``on_payloads``. For benchmark anchors only (bench/fanout.py):
    aiortc's own encoder runs ``medium`` and re-opens on each REMB change."""
    import fractions

    import av
    from aiortc import rtcrtpsender
    from aiortc.codecs import h264

    if not hasattr(rtcrtpsender, "get_encoder") or not hasattr(h264.H264Encoder, "_encode_frame"):
        raise AdapterError("aiortc internals changed: no get_encoder / H264Encoder._encode_frame")
    bitrate = kbps * 1000
    x264_params = f"nal-hrd=cbr:vbv-maxrate={kbps}:vbv-bufsize={max(1, kbps // 3)}:filler=1"

    class BenchH264Encoder(h264.H264Encoder):
        @property
        def target_bitrate(self) -> int:
            return bitrate

        @target_bitrate.setter
        def target_bitrate(self, value: int) -> None:
            pass  # REMB is ignored: fixed rate

        def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
            codec = self.codec
            if codec is not None and (frame.width != codec.width or frame.height != codec.height):
                self.buffer_data, self.buffer_pts, self.codec = b"", None, None
            if self.codec is None:
                ctx = av.CodecContext.create("libx264", "w")
                ctx.width, ctx.height = frame.width, frame.height
                ctx.bit_rate = bitrate
                ctx.pix_fmt = "yuv420p"
                ctx.framerate = fractions.Fraction(h264.MAX_FRAME_RATE, 1)
                ctx.time_base = fractions.Fraction(1, h264.MAX_FRAME_RATE)
                ctx.options = {
                    "level": "31",
                    "tune": "zerolatency",
                    "preset": preset,
                    "x264-params": x264_params,
                }
                ctx.profile = "Baseline"
                self.codec = ctx
            result: Iterator[bytes] = super()._encode_frame(frame, force_keyframe)
            return result

        def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
            payloads, timestamp = super().encode(frame, force_keyframe)
            on_payloads(payloads)
            return payloads, timestamp

    original: Callable[[Any], Any] = rtcrtpsender.get_encoder

    def get_encoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "video/h264":
            return BenchH264Encoder()
        return original(codec)

    rtcrtpsender.get_encoder = get_encoder


def keyframe_resync_buffer(starts_keyframe: Callable[[bytes], bool]) -> type[Any]:
    """aiortc's JitterBuffer, made to start over at a keyframe as a browser's does.

    aiortc's video jitter buffer (512 packets) releases frames strictly in sequence order, so
    one packet that never arrives (its retransmission refused as too late, or lost again)
    holds back every later frame, keyframes included, until 512 packets later: 17 s of a
    200 kbit/s layer. Chromium assembles frames independently and decodes from the next
    keyframe. Here a packet that starts a keyframe (``starts_keyframe(payload)``) drops what
    waits before it when there is a hole among it."""
    from aiortc import jitterbuffer
    from aiortc.utils import uint16_add

    base: Any = jitterbuffer.JitterBuffer
    if not hasattr(base, "_remove_frame") or not hasattr(base, "remove"):
        raise AdapterError("aiortc internals changed: JitterBuffer")

    class ResyncJitterBuffer(base):  # type: ignore[misc]
        def add(self, packet: Any) -> tuple[bool, Any]:
            origin = self._origin
            if self._is_video and origin is not None and starts_keyframe(packet.payload):
                delta = uint16_add(packet.sequence_number, -origin)
                if 0 < delta < self._capacity and any(
                    self._packets[(origin + i) % self._capacity] is None for i in range(delta)
                ):
                    self.remove(delta)  # the origin is now this packet's
            found: tuple[bool, Any] = super().add(packet)
            return found

    return ResyncJitterBuffer


def use_bench_keyframe_resync(starts_keyframe: Callable[[bytes], bool]) -> None:
    """Video receivers in THIS process start over at a keyframe past a lost packet
    (``keyframe_resync_buffer``). For benchmark viewers only (bench/netbed/peer.py
    ``--resync``)."""
    from aiortc import rtcrtpreceiver

    if not hasattr(rtcrtpreceiver, "JitterBuffer"):
        raise AdapterError("aiortc internals changed: rtcrtpreceiver.JitterBuffer")
    setattr(rtcrtpreceiver, "JitterBuffer", keyframe_resync_buffer(starts_keyframe))  # noqa: B010


def use_bench_nack_log(
    on_nack: Callable[[list[int]], None],
    on_filled: Callable[[int], None],
    on_given_up: Callable[[list[int]], None],
) -> None:
    """Video receivers in THIS process report each NACK they send (``on_nack`` with its list),
    each packet that fills a hole they NACKed (``on_filled``: a retransmission or a late
    original) and the holes they stop asking for unfilled (``on_given_up``: 128 packets on).
    For benchmark viewers only (bench/netbed/peer.py: ``bench.netbed.holes``)."""
    base: Any = aiortc_rtcrtpreceiver.NackGenerator
    if not hasattr(base, "add") or not hasattr(base(), "missing"):
        raise AdapterError("aiortc internals changed: NackGenerator")

    class LoggedNackGenerator(base):  # type: ignore[misc]
        def add(self, packet: Any) -> bool:
            seq = packet.sequence_number
            before = set(self.missing)
            missed: bool = super().add(packet)
            if seq in before:
                on_filled(seq)
            if gone := before - self.missing - {seq}:
                on_given_up(sorted(gone))
            if missed:  # aiortc sends sorted(missing) now
                on_nack(sorted(self.missing))
            return missed

    setattr(aiortc_rtcrtpreceiver, "NackGenerator", LoggedNackGenerator)  # noqa: B010


def divert_ice_datagrams(dtls_transport: Any, on_datagram: Callable[[bytes, int], None]) -> None:
    """Hand every datagram the ICE connection under ``dtls_transport`` receives to
    ``on_datagram(data, component)`` instead of aiortc (bench/load_viewers.py's light viewers
    count RTP without decrypting it)."""
    connection = dtls_transport.transport._connection
    if not hasattr(connection, "data_received"):
        raise AdapterError("aioice internals changed: no Connection.data_received")
    connection.data_received = on_datagram


def guard_ice_checks(pc: Any, policy: CandidatePolicy) -> None:
    """Bound what ``pc``'s ICE connections send to addresses the peer chose: ordinary checks
    start at most one per ``policy.check_interval`` (triggered checks are not delayed), and at
    most ``policy.max_per_session`` peer-reflexive addresses are learned from incoming checks
    (checks from further new addresses are dropped unanswered: each would start a triggered
    check of up to seven requests, to any source address a spoofer writes). Call after the
    remote description is set and before the local one (which starts the checks)."""
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        if id(connection) not in seen:
            seen.add(id(connection))
            _pace(connection, policy.check_interval)
            _cap_learned(connection, policy.max_per_session)


def _pace(connection: Any, interval: float) -> None:
    """aioice's ``connect()`` calls ``_check_periodic`` every 20 ms until it returns False; a
    skipped turn returns True (keep going) unless the check list is done."""
    if not hasattr(connection, "_check_periodic") or not hasattr(connection, "_check_list_done"):
        raise AdapterError("aioice Connection internals changed: no _check_periodic")
    loop = asyncio.get_running_loop()
    start: Callable[[], bool] = connection._check_periodic
    last = -interval

    def paced() -> bool:
        nonlocal last
        now = loop.time()
        if now - last < interval:
            return not connection._check_list_done
        last = now
        return start()

    connection._check_periodic = paced


def _cap_learned(connection: Any, limit: int) -> None:
    """aioice's StunProtocol hands every request to ``connection.request_received``, which
    answers it and learns the source as a peer-reflexive candidate (``_remote_candidates``, each
    with ``_network_host`` and ``port``) when it is new."""
    if not hasattr(connection, "request_received") or not hasattr(connection, "_remote_candidates"):
        raise AdapterError("aioice Connection internals changed: no request_received")
    received: Callable[[Any, tuple[str, int], Any], None] = connection.request_received

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        known = connection._remote_candidates
        if sum(c.type == "prflx" for c in known) >= limit and not any(
            c._network_host == addr[0] and c.port == addr[1] for c in known
        ):
            return
        received(message, addr, protocol)

    connection.request_received = request_received


# -- node certificate -----------------------------------------------------------------------------
class NodeCertificate(RTCCertificate):
    """One DTLS certificate (ECDSA P-256, as aiortc makes) shared by every peer connection of a
    node, as browsers and SFUs do: aiortc otherwise generates a key and certificate per
    RTCPeerConnection, computes its fingerprints per description, and builds an OpenSSL context
    per handshake. Here the fingerprints are computed once and the context once per SRTP profile
    list; it keeps no session cache (no resumption across peers)."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key=key, cert=cert)
        self._fingerprints = super().getFingerprints()
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        key = tuple(p.openssl_profile for p in srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = super()._create_ssl_context(srtp_profiles)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            self._contexts[key] = context
        return context


_constructing = threading.local()  # the certificate a peer connection being built takes


class _GivenCertificate(RTCCertificate):
    """What aiortc's RTCPeerConnection module sees as RTCCertificate once
    ``new_peer_connection`` has been used: ``generateCertificate`` returns the certificate the
    peer connection being constructed on this thread was given (aiortc's own way otherwise)."""

    @classmethod
    def generateCertificate(cls) -> RTCCertificate:  # type: ignore[override]
        given: RTCCertificate | None = getattr(_constructing, "certificate", None)
        if given is not None:
            return given
        return RTCCertificate.generateCertificate()


def new_peer_connection(configuration: Any, certificate: RTCCertificate) -> RTCPeerConnection:
    """An RTCPeerConnection that does DTLS with ``certificate`` (the node's), without the key
    and certificate aiortc would generate for it and throw away (~0.1 ms per join)."""
    if getattr(aiortc_rtcpeerconnection, "RTCCertificate", None) not in (
        RTCCertificate,
        _GivenCertificate,
    ):
        raise AdapterError("aiortc internals changed: rtcpeerconnection.RTCCertificate")
    aiortc_rtcpeerconnection.RTCCertificate = _GivenCertificate  # type: ignore[attr-defined]
    _constructing.certificate = certificate
    try:
        pc = RTCPeerConnection(configuration)
    finally:
        _constructing.certificate = None
    use_certificate(pc, certificate)  # (checks that it took)
    return pc


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate) -> None:
    """Make ``pc`` do DTLS with ``certificate`` (the node's) instead of the one aiortc made for
    it; call before adding any transceiver (each transport takes the certificate when made)."""
    name = "_RTCPeerConnection__certificates"
    if not isinstance(getattr(pc, name, None), list):
        raise AdapterError("RTCPeerConnection internals changed: no certificate list")
    if pc.getTransceivers():
        raise AdapterError("use_certificate() after a transceiver was added")
    setattr(pc, name, [certificate])


# --- ICE consent by traffic (issue 16) ----------------------------------------------------------
# aioice's Connection.query_consent (RFC 7675 checks every ~5 s, closed after 6 unanswered) is
# replaced per connection by a watcher of what the peer sends (relay.media.consent): ffmpeg's
# WHIP muxer never answers those checks. Hooks: Connection.query_consent / check_incoming
# (called for authenticated Binding requests only) / close / _query_consent_task, and
# RTCDtlsTransport._handle_rtp_data / _handle_rtcp_data (called after SRTP unprotect succeeded).


def ice_transports(pc: Any) -> list[tuple[Any, Any]]:
    """(DTLS transport, aioice Connection) of each transport the peer connection still uses
    (after ``setRemoteDescription``, when BUNDLE has folded the others away)."""
    found: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        found.setdefault(id(dtls), dtls)
    pairs = []
    for dtls in found.values():
        ice = getattr(dtls, "transport", None)
        connection = getattr(ice, "_connection", None)
        if connection is None:
            raise AdapterError("RTCIceTransport internals changed: no _connection")
        pairs.append((dtls, connection))
    return pairs


def install_traffic_consent(pc: Any, timeout: float) -> None:
    """Keep each of ``pc``'s ICE connections while its peer sends authenticated STUN or SRTP/
    SRTCP; close it after ``timeout`` s of silence (instead of aioice's consent checks).
    Install between ``setRemoteDescription`` and the answer."""
    for dtls, connection in ice_transports(pc):
        _consent_by_traffic(dtls, connection, timeout)


def _consent_by_traffic(dtls: Any, connection: Any, timeout: float) -> None:
    for obj, name in (
        (connection, "query_consent"),
        (connection, "check_incoming"),
        (connection, "close"),
        (connection, "_query_consent_task"),
        (dtls, "_handle_rtp_data"),
        (dtls, "_handle_rtcp_data"),
    ):
        if not hasattr(obj, name):
            raise AdapterError(f"{type(obj).__name__} internals changed: no {name}")
    if getattr(connection, "_stagecast_consent", None) is not None:
        return
    clock = time.monotonic
    timer = ConsentTimer(timeout, clock())
    connection._stagecast_consent = timer
    check_incoming = connection.check_incoming
    handle_rtp = dtls._handle_rtp_data
    handle_rtcp = dtls._handle_rtcp_data

    def checked(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        timer.seen(clock())
        check_incoming(message, addr, protocol)

    async def rtp(data: bytes, arrival_time_ms: int) -> None:
        timer.seen(clock())
        await handle_rtp(data, arrival_time_ms)

    # what a C lane (``_offer_lane``) stands in for: consent over the parsed-packet router
    rtp._stagecast_consent = (timer, handle_rtp)  # type: ignore[attr-defined]

    async def rtcp(data: bytes) -> None:
        timer.seen(clock())
        await handle_rtcp(data)

    async def watch() -> None:
        timer.seen(clock())  # consent starts when ICE completes
        while True:
            now = clock()
            if timer.expired(now):
                break
            await asyncio.sleep(max(timer.deadline - now, 0.01))
        log.info("%s: nothing from the peer for %.1f s: consent expired", connection, timeout)
        connection._query_consent_task = None  # as aioice does before closing from this task
        await connection.close()

    connection.check_incoming = checked
    connection.query_consent = watch
    dtls._handle_rtp_data = rtp
    dtls._handle_rtcp_data = rtcp


def consent_timer(connection: Any) -> ConsentTimer | None:
    """The consent timer installed on an aioice Connection (None: aioice's own checks)."""
    timer: ConsentTimer | None = getattr(connection, "_stagecast_consent", None)
    return timer


# --- One UDP port per node, ICE-lite (issue 16) -------------------------------------------------
# Each answering connection gets, instead of its own sockets, one StunProtocol whose transport
# writes to the node's shared port (relay/rtc/shared_port.py), registered there under its local
# ufrag. The connection answers as ICE-lite (RFC 8445 §2.5): a=ice-lite in the answer (the
# gatherer's getLocalParameters), never a check of its own (Connection.connect replaced), the
# pair the controlling peer names with USE-CANDIDATE nominated (Connection.check_incoming
# replaced). Hooks: Connection.get_component_candidates / connect / check_incoming /
# _check_list_maybe_fail / _check_list_state / _check_list_done / _early_checks(_done) /
# _nominated / _protocols / _remote_candidates / _local_candidates_end / _local_username /
# _closing; RTCIceTransport.
# iceGatherer; StunProtocol.local_candidate / transport / connection_made / connection_lost.


class _PortTransport(asyncio.DatagramTransport):
    """What a StunProtocol sees of the shared port: sends go to the port's socket bound to
    ``local`` (the protocol's candidate's); closing unregisters the session (and tells the
    protocol, as a socket would)."""

    def __init__(
        self, port: Any, ufrag: str, protocol: StunProtocol, local: str, tcp: Any | None = None
    ) -> None:
        super().__init__()
        self._port = port
        self._ufrag = ufrag
        self._protocol = protocol
        self._local = local
        self._tcp = tcp  # the node's ICE-TCP port, where the session is registered too
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closed:
            self._port.sendto(data, addr, self._local)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._port.socket_for(self._local)
        if name == "socket":
            return sock  # the direct sender sends on (a duplicate of) it
        if name == "sockname":
            return sock.getsockname()[:2] if sock is not None else default
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._port.unregister(self._ufrag)
        if self._tcp is not None:
            self._tcp.unregister(self._ufrag)
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


SESSION_BACKLOG = 1024
"""Datagrams one session may have waiting on the shared port (a per-peer socket's buffer held
~90 full-size ones): beyond, its newest are dropped, as a full socket buffer drops them."""


class _SessionSink:
    """What the shared port hands one session's datagrams to. STUN (authenticated by the mux
    table already) goes to the session's StunProtocol, which answers at once. SRTP (not SRTCP)
    that arrives while nothing waits in the session's queue is decrypted and handed to aiortc's
    RTP handling right here (``_receive_rtp``), and so is SRTCP that starts with transport-cc
    feedback (``_receive_feedback``); the rest (DTLS, other SRTCP, anything behind queued
    datagrams) goes straight to the aioice Connection's receive queue (StunProtocol would first
    try to parse each one as STUN), bounded by ``SESSION_BACKLOG``."""

    __slots__ = (
        "_component",
        "_connection",
        "_dtls",
        "_protocols",
        "_queue",
        "_resuming",
        "direct",
        "dropped",
        "feedback",
    )

    def __init__(
        self, connection: Any, protocols: dict[str, StunProtocol], dtls: Any | None = None
    ) -> None:
        self._protocols = protocols  # by the port's bound address: a pair's local side
        self._connection = connection
        self._queue: asyncio.Queue[Any] = connection._queue
        self._component: int = next(iter(protocols.values())).local_candidate.component
        self._dtls = dtls
        self._resuming: set[asyncio.Task[None]] = set()  # RTP handling that suspended
        self.dropped = 0
        self.direct = 0  # RTP packets handled without the queue
        self.feedback = 0  # transport-cc feedback datagrams handled without it

    def datagram_received(self, data: bytes, addr: tuple[str, int], local: str) -> None:
        if is_stun(data):
            protocol = self._protocols.get(local)
            if protocol is not None:
                protocol.datagram_received(data, addr)
        elif (
            self._dtls is not None
            and 127 < data[0] < 192
            and not is_rtcp(data)
            and self._queue.empty()
            and _receive_rtp(self._dtls, data, self._resuming)
        ):
            self.direct += 1
        elif (
            self._dtls is not None
            and len(data) >= 12
            and data[1] == RTCP_RTPFB
            and data[0] & 0xDF == 0x80 | FMT_TRANSPORT_CC  # (SRTCP's first header is clear)
            and self._queue.empty()
            and _receive_feedback(self._dtls, self._connection, data, self._resuming)
        ):
            self.feedback += 1
        elif self._queue.qsize() < SESSION_BACKLOG:
            # (aioice's data_received queues it; a transport-cc tap stamps its arrival there)
            self._connection.data_received(data, self._component)
        else:
            self.dropped += 1


# --- RTP received without aiortc's receive task (issue 20) ---------------------------------------
# aiortc reads every datagram in its DTLS transport's task (RTCDtlsTransport.__run ->
# _recv_next): each RTP packet crosses an asyncio.Queue and wakes that task once. On the shared
# port, a session's SRTP packet that arrives with nothing queued ahead of it is handled in the
# port's read callback instead: decrypted with the transport's receive session (_rx_srtp) and
# parsed in one call (relay/rtc/rtp_reader.py, in C when built), counted (__rx_bytes /
# __rx_packets), and the parsed packet given to _handle_rtp_data (with every wrapper installed
# on it: consent, transport-cc, simulcast), whose innermost layer ``install_shared_port``
# replaces by one that takes a parsed packet too (``_parsed_rtp_handler``: routed as aiortc's
# would route it). That coroutine finishes without suspending in practice (its sends end in a
# non-blocking sendto); when it does suspend, a task carries on with it.


def _receive_rtp(dtls: Any, data: bytes, resuming: set[asyncio.Task[None]]) -> bool:
    """Handle one SRTP datagram of ``dtls`` now; False when it must take the queue (the
    transport is not connected: no SRTP keys yet, or gone). A handling that suspends goes on
    in a task kept in ``resuming`` until it ends."""
    srtp = dtls._rx_srtp
    if srtp is None or dtls._state is not DtlsState.CONNECTED:
        return False
    reader: tuple[Any, RtpReader] | None = dtls.__dict__.get("_stagecast_reader")
    if reader is None or reader[0] is not srtp:
        if reader is not None and reader[1].lanes:  # keys changed: the old lanes are done
            _port_lane(dtls, None)
        reader = dtls._stagecast_reader = (
            srtp,
            new_rtp_reader(srtp, dtls._rtp_header_extensions_map),
        )
    # a packet one of the reader's C lanes takes is handled there in full (and counted)
    packet = reader[1].receive(data)
    if packet is None:
        return True  # taken by a lane, or dropped as aiortc does (replayed, forged, malformed)
    dtls._RTCDtlsTransport__rx_bytes += len(data)
    dtls._RTCDtlsTransport__rx_packets += 1
    task = run_now(dtls._handle_rtp_data(packet, ntp_ms()))
    if task is not None:
        resuming.add(task)
        task.add_done_callback(resuming.discard)
    elif not dtls.__dict__.get("_stagecast_no_lanes") and packet.ssrc not in reader[1].lanes:
        _offer_lane(dtls, reader[1], packet)
    return True


def _offer_lane(dtls: Any, reader: RtpReader, packet: Any) -> None:
    """After ``packet`` went aiortc's way: give its SSRC a C lane on ``reader`` when that way
    holds nothing a lane leaves out (see ``_rtp_reader.c``): the transport's packets go through
    the consent wrapper and the parsed-packet router alone (no transport-cc tap), its receiver
    is a tapped one (not simulcast's), and the receiver's ``lane_for`` agrees. A transport that
    cannot have lanes is marked and not asked again."""
    router = dtls._rtp_router
    consent = getattr(dtls._handle_rtp_data, "_stagecast_consent", None)
    if (
        not lane_reader(reader)
        or "route_rtp" in vars(router)  # tap_transport_sequence: every packet's arrival recorded
        or consent is None
        or not getattr(consent[1], "_stagecast_parsed", False)
    ):
        dtls._stagecast_no_lanes = True
        return
    receiver = router.ssrc_table.get(packet.ssrc)
    lane_for = getattr(getattr(receiver, "_handle_rtp_packet", None), "_stagecast_lane", None)
    if lane_for is not None and lane_for(packet, reader, dtls, consent[0]):
        # the port's read call offers the session's SRTP to the lanes first (again now: the
        # peer's addresses may have changed since)
        _port_lane(dtls, reader.take)


def _port_lane(dtls: Any, take: Callable[[bytes], bool] | None) -> None:
    """Have the shared port offer ``dtls``'s SRTP to ``take`` in its read call (None: stop)."""
    for protocol in getattr(dtls.transport._connection, "_protocols", ()):
        transport = getattr(protocol, "transport", None)
        if isinstance(transport, _PortTransport) and not transport._closed:
            transport._port.set_lane(transport._ufrag, take)


def _receive_feedback(
    dtls: Any, connection: Any, data: bytes, resuming: set[asyncio.Task[None]]
) -> bool:
    """Handle one SRTCP datagram of ``dtls`` that starts with transport-cc feedback now (False:
    it must take the queue: no ``tap_transport_feedback``, or not connected): decrypted and split
    in one call (relay/rtc/rtcp_reader.py), its FCIs to the tap, the rest of the compound to
    aiortc's handler (with the consent and ``tap_rtcp`` wrappers on it) as its receive task
    would have given it; the consent timer sees the datagram either way."""
    on_feedback: FeedbackHandler | None = dtls.__dict__.get("_stagecast_feedback")
    srtp = dtls._rx_srtp
    if on_feedback is None or srtp is None or dtls._state is not DtlsState.CONNECTED:
        return False
    dtls._RTCDtlsTransport__rx_bytes += len(data)
    dtls._RTCDtlsTransport__rx_packets += 1
    reader: tuple[Any, RtcpReader] | None = dtls.__dict__.get("_stagecast_rtcp_reader")
    if reader is None or reader[0] is not srtp:
        reader = dtls._stagecast_rtcp_reader = (srtp, new_rtcp_reader(srtp))
    split = reader[1].read(data)
    if split is None:
        return True  # as aiortc does: dropped (replayed, forged, not ours)
    _feedback_split(dtls, connection, on_feedback, resuming, *split)
    _feedback_lane(dtls, connection, on_feedback, resuming, reader[1])
    return True


def _feedback_split(
    dtls: Any,
    connection: Any,
    on_feedback: FeedbackHandler,
    resuming: set[asyncio.Task[None]],
    fcis: tuple[bytes, ...],
    rest: bytes,
) -> None:
    """A decrypted, split feedback datagram: the FCIs to the tap, the rest of the compound to
    aiortc's handler (with the consent and ``tap_rtcp`` wrappers on it) as its receive task
    would have given it; the consent timer sees the datagram either way."""
    if fcis:
        timer: ConsentTimer | None = getattr(connection, "_stagecast_consent", None)
        if timer is not None:
            timer.seen(time.monotonic())
        on_feedback(fcis)
    if rest:  # (rest is the whole datagram when the split took nothing: aiortc's path)
        task = run_now(dtls._handle_rtcp_data(rest))
        if task is not None:
            resuming.add(task)
            task.add_done_callback(resuming.discard)


def flush_feedback_lane(pc: RTCPeerConnection) -> int:
    """The counts ``pc``'s feedback lane holds since its last tick, to the tick now; returns
    how many lone feedback datagrams the lane took in all."""
    taken = 0
    for dtls, _ in ice_transports(pc):
        reader: RtcpReader | None = dtls.__dict__.get("_stagecast_lane_reader")
        if reader is not None:
            reader.flush()
            taken += reader.lane_feedbacks
    return taken


LANE_RETRY = 1.0
"""Seconds between a session's lane installs (each rebuilds the port's lane table)."""


def _feedback_lane(
    dtls: Any,
    connection: Any,
    on_feedback: FeedbackHandler,
    resuming: set[asyncio.Task[None]],
    reader: RtcpReader,
) -> None:
    """After a feedback datagram took the read callback's path: make ``reader`` the session's
    lane on the shared port (again: the peer's addresses may have changed since), when the tap
    has a ``FeedbackLane``, the reader is the C one and no RTP lane holds the session. At most
    once a ``LANE_RETRY``."""
    lane: FeedbackLane | None = dtls.__dict__.get("_stagecast_feedback_lane")
    if lane is None or not laneable(reader):
        return
    rtp: tuple[Any, RtpReader] | None = dtls.__dict__.get("_stagecast_reader")
    if rtp is not None and rtp[1].lanes:
        return
    now = time.monotonic()
    if now < dtls.__dict__.get("_stagecast_lane_at", 0.0) + LANE_RETRY:
        return
    dtls._stagecast_lane_at = now
    if dtls.__dict__.get("_stagecast_lane_reader") is not reader:
        dtls._stagecast_lane_reader = reader

        def slow(fcis: tuple[bytes, ...], rest: bytes) -> None:
            _feedback_split(dtls, connection, on_feedback, resuming, fcis, rest)

        def tick(rx_bytes: int, rx_packets: int, feedbacks: int, now: float) -> None:
            """Once a second: what the lane's datagrams count for the transport (getStats),
            the session and consent (a 30 s timeout: a second late is nothing)."""
            dtls._RTCDtlsTransport__rx_bytes += rx_bytes
            dtls._RTCDtlsTransport__rx_packets += rx_packets
            lane.counted(feedbacks)
            timer: ConsentTimer | None = getattr(connection, "_stagecast_consent", None)
            if timer is not None:
                timer.seen(now)

        reader.bind(lane.state, lane.params, lane.taken, slow, tick)
    _port_lane(dtls, reader.take)


def _parsed_rtp_handler(dtls: Any) -> Callable[[Any, int], Coroutine[Any, Any, None]]:
    """aiortc's ``RTCDtlsTransport._handle_rtp_data`` for bytes (from aiortc's receive task),
    and its routing for an ``RtpPacket`` the shared port's read callback parsed already."""
    handle_bytes = dtls._handle_rtp_data

    async def handle(data: Any, arrival_time_ms: int) -> None:
        if isinstance(data, bytes):
            await handle_bytes(data, arrival_time_ms)
            return
        receiver = dtls._rtp_router.route_rtp(data)  # read each time: tap_transport_sequence
        if receiver is not None:
            await receiver._handle_rtp_packet(data, arrival_time_ms=arrival_time_ms)

    handle._stagecast_parsed = True  # type: ignore[attr-defined]
    return handle


NTP_UNIX_OFFSET_MS = 2_208_988_800_000
"""Milliseconds from the NTP epoch (1900) to the Unix epoch."""


def ntp_ms() -> int:
    """aiortc's ``clock.current_ms()`` (milliseconds since the NTP epoch, the receivers'
    arrival times), from ``time.time()`` instead of an aware datetime (a tenth of the cost)."""
    return int(time.time() * 1000) + NTP_UNIX_OFFSET_MS


def run_now(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` to its end now, without a task, if it does not suspend (None); if it does,
    the task that takes it over from where it stopped. An exception it raises is logged (a task
    of aiortc's would have logged it and closed the transport: one bad packet is only dropped
    here)."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    except Exception:
        log.exception("RTP handling failed")
        return None
    return asyncio.ensure_future(_resumed(coro, awaited))


async def _resumed(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    try:
        await _Resume(coro, awaited)
    except Exception:
        log.exception("RTP handling failed")


class _Resume:
    """Awaitable that continues a coroutine already suspended on ``awaited`` (what it yielded:
    a future, or None for a bare yield), in the task that awaits this."""

    def __init__(self, coro: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited

    def __await__(self) -> Any:
        coro, awaited = self._coro, self._awaited
        while True:
            try:
                value = yield awaited
            except BaseException as exc:  # thrown into the task (cancelled): pass it on
                try:
                    awaited = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                awaited = coro.send(value)
            except StopIteration:
                return


def shared_port_connections(pc: Any) -> list[tuple[Any, Any]]:
    """(ICE transport, aioice Connection) pairs of ``pc``, for ``install_shared_port``."""
    return [(dtls.transport, connection) for dtls, connection in ice_transports(pc)]


def install_shared_port(pc: Any, port: Any, hosts: list[str], tcp: Any | None = None) -> bool:
    """Make ``pc``'s one ICE transport an ICE-lite agent on ``port`` (a SharedUdpPort),
    advertising host candidates ``hosts`` with the port's number, and with ``tcp`` (a
    SharedTcpPort) passive ICE-TCP candidates on its number too. False (nothing changed) when
    the offer left more than one transport (no BUNDLE): their ufrags would be the same."""
    pairs = shared_port_connections(pc)
    if len(pairs) != 1 or not hosts:
        return False
    ice, connection = pairs[0]
    dtls = ice_transports(pc)[0][0]
    for name in (
        "_rx_srtp",
        "_state",
        "_handle_rtp_data",
        "_RTCDtlsTransport__rx_bytes",
        "_rtp_router",
        "_rtp_header_extensions_map",
    ):
        if not hasattr(dtls, name):
            raise AdapterError(f"RTCDtlsTransport internals changed: no {name}")
    for name in (
        "get_component_candidates",
        "connect",
        "check_incoming",
        "_check_list_maybe_fail",
        "_check_list_state",
        "_early_checks",
        "_nominated",
        "_protocols",
        "_remote_candidates",
        "_closing",
        "_queue",
    ):
        if not hasattr(connection, name):
            raise AdapterError(f"aioice Connection internals changed: no {name}")
    gatherer = ice.iceGatherer
    if not hasattr(connection, "_local_username"):
        raise AdapterError("aioice Connection internals changed: no _local_username")
    gathering = ("gather_candidates", "_local_candidates_start", "_local_candidates", "_components")
    for name in gathering:
        if not hasattr(connection, name):
            raise AdapterError(f"aioice Connection internals changed: no {name}")
    connection._local_username = port.unused_ufrag()  # unique on the port: the demux key
    dtls._handle_rtp_data = _parsed_rtp_handler(dtls)  # before consent etc. wrap it
    connection.get_component_candidates = _shared_candidates(connection, dtls, port, hosts, tcp)
    connection.gather_candidates = _shared_gather(connection)
    connection.connect = _lite_connect(connection)
    connection.check_incoming = _lite_check(connection)
    connection._check_list_maybe_fail = lambda: None  # a lite agent's checks cannot fail
    parameters = gatherer.getLocalParameters()
    parameters.iceLite = True
    gatherer.getLocalParameters = lambda: parameters
    return True


def _shared_gather(connection: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    """aioice's gather_candidates without listing the host's interfaces (~0.2 ms per
    session): the shared port's candidates are the node's, known already."""

    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        for component in connection._components:
            connection._local_candidates += await connection.get_component_candidates(
                component=component, addresses=[]
            )
        connection._local_candidates_end = True

    return gather_candidates


def _shared_candidates(
    connection: Any, dtls: Any, port: Any, hosts: list[str], tcp: Any | None
) -> Any:
    async def get_component_candidates(
        component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        number = port.port
        reachable = [h for h in hosts if port.local_for(h) is not None]
        candidates = [
            Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host") - i,
                host=host,
                port=number,
                type="host",
            )
            for i, host in enumerate(reachable)
        ]
        ufrag, password = connection.local_username, connection.local_password
        protocols: dict[str, StunProtocol] = {}
        for candidate in candidates:  # a protocol per socket, on its first candidate
            local = port.local_for(candidate.host)
            if local in protocols:
                continue
            protocol = StunProtocol(connection)
            protocol.local_candidate = candidate
            protocol.connection_made(_PortTransport(port, ufrag, protocol, local, tcp))
            protocols[local] = protocol
            connection._protocols.append(protocol)
        port.register(ufrag, password, _SessionSink(connection, protocols, dtls))
        if tcp is not None:
            passive = [_tcp_candidate(component, host, tcp.port, i) for i, host in enumerate(hosts)]
            tcp.register(ufrag, password, _TcpSession(connection, passive[0]))
            candidates += passive
        return candidates

    return get_component_candidates


# --- ICE-TCP on one port (issue 16) --------------------------------------------------------------
# A session on the shared UDP port also offers RFC 6544 passive candidates on the node's TCP port
# (relay/rtc/tcp_port.py). Each TCP connection its peer opens (and authenticates with a Binding
# request) becomes one more StunProtocol of the session's aioice Connection (``_protocols``),
# whose transport writes RFC 4571 frames to that connection; the ICE-lite check handler above
# nominates a pair on it like any other, so DTLS and SRTP go out on the stream the peer chose.

MAX_STREAMS = 8  # TCP connections one session may hold (a browser opens one per local address)


def _tcp_candidate(component: int, host: str, port: int, index: int) -> Candidate:
    """RFC 6544 §4.2: a passive host candidate ranks below the UDP ones (direction preference
    passive = 4 of 7 in the local preference)."""
    local_preference = (4 << 13) | (8191 - index)
    return Candidate(
        foundation=candidate_foundation("host", "tcp", host),
        component=component,
        transport="tcp",
        priority=(126 << 24) | (local_preference << 8) | (256 - component),
        host=host,
        port=port,
        type="host",
        tcptype="passive",
    )


class _StreamTransport(asyncio.DatagramTransport):
    """What a StunProtocol sees of one ICE-TCP connection: each datagram one frame."""

    def __init__(self, stream: Any, protocol: StunProtocol) -> None:
        super().__init__()
        self.stream = stream
        self._protocol = protocol

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.stream.write_frame(data)  # a full queue drops it, as UDP would

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return None  # not a datagram socket: the direct sender writes frames (pair_stream)
        if name == "peername":
            return self.stream.peer
        return default

    def is_closing(self) -> bool:
        return bool(self.stream.closed)

    def close(self) -> None:
        self.stream.close()
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()


class _TcpSink:
    """A stream's frames to its StunProtocol; when the stream goes, so does the protocol."""

    def __init__(self, connection: Any, protocol: StunProtocol) -> None:
        self._connection = connection
        self._protocol = protocol

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._protocol.datagram_received(data, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)
        connection = self._connection
        protocols = connection._protocols  # (Connection.close is iterating it when closing)
        if (
            not connection._closing
            and self._protocol in protocols
            and not any(pair.protocol is self._protocol for pair in connection._nominated.values())
        ):
            protocols.remove(self._protocol)


class _TcpSession:
    """Registered on the TCP port under the session's ufrag."""

    def __init__(self, connection: Any, candidate: Candidate) -> None:
        self._connection = connection
        self._candidate = candidate

    def stream_opened(self, stream: Any) -> _TcpSink | None:
        connection = self._connection
        if connection._closing or not connection._local_candidates_end:
            return None
        streams = sum(isinstance(p.transport, _StreamTransport) for p in connection._protocols)
        if streams >= MAX_STREAMS:
            return None
        protocol = StunProtocol(connection)
        protocol.local_candidate = self._candidate
        protocol.connection_made(_StreamTransport(stream, protocol))
        connection._protocols.append(protocol)
        return _TcpSink(connection, protocol)


def pair_stream(pair: Any) -> Any | None:
    """The ICE-TCP stream (relay.rtc.tcp_port.TcpStream) an aioice candidate pair sends on, or
    None when it is not an ICE-TCP pair."""
    transport = getattr(pair.protocol, "transport", None)
    if isinstance(transport, _StreamTransport):
        return transport.stream
    return None


def _lite_check(connection: Any) -> Callable[[Any, tuple[str, int], Any], None]:
    def check_incoming(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        """An authenticated check (answered already): USE-CANDIDATE nominates its pair."""
        if "USE-CANDIDATE" not in message.attributes:
            return
        component = protocol.local_candidate.component
        current = connection._nominated.get(component)
        if current is not None and current.remote_addr == addr:
            return
        remote = next(
            (
                c
                for c in connection._remote_candidates
                if c._network_host == addr[0] and c.port == addr[1]
            ),
            None,
        )
        if remote is None:
            remote = Candidate(
                foundation=random_string(10),
                component=component,
                transport=protocol.local_candidate.transport,
                priority=message.attributes.get("PRIORITY", 0),
                host=addr[0],
                port=addr[1],
                type="prflx",
            )
            connection._remote_candidates.append(remote)
        pair = CandidatePair(protocol, remote)
        pair.state = CandidatePair.State.SUCCEEDED
        pair.nominated = pair.remote_nominated = True
        connection._nominated[component] = pair
        if not connection._check_list_done:
            connection._check_list_done = True
            connection._check_list_state.put_nowait(ICE_COMPLETED)

    return check_incoming


def _lite_connect(connection: Any) -> Callable[[], Any]:
    async def connect() -> None:
        if not connection._local_candidates_end:
            raise ConnectionError("Local candidates gathering was not performed")
        if connection.remote_username is None or connection.remote_password is None:
            raise ConnectionError("Remote username or password is missing")
        early = list(connection._early_checks)
        connection._early_checks.clear()
        connection._early_checks_done = True
        for message, addr, protocol in early:
            connection.check_incoming(message, addr, protocol)
        if await connection._check_list_state.get() != ICE_COMPLETED:
            raise ConnectionError("ICE negotiation failed")
        connection._query_consent_task = asyncio.create_task(connection.query_consent())

    return connect


def offer_addresses(pc: Any, offered: list[str]) -> None:
    """Gather ``pc``'s host candidates on ``offered`` addresses only (aioice's default: every
    interface but loopback)."""
    for _, connection in ice_transports(pc):
        original = connection.get_component_candidates

        async def get_component_candidates(
            component: int, addresses: list[str], timeout: int = 5, original: Any = original
        ) -> list[Candidate]:
            del addresses  # aioice's: every interface but loopback
            found: list[Candidate] = await original(component, list(offered), timeout)
            return found

        connection.get_component_candidates = get_component_candidates


# --- Transport-wide congestion control feedback to publishers (issue 17) ------------------------
# aiortc answers only the header extensions and RTCP feedback it knows (HEADER_EXTENSIONS, the
# codecs' rtcpFeedback): a publisher's transport-cc offer is dropped, so the browser ramps on
# aiortc's receive-side REMB alone. Hooks: RTCRtpTransceiver._headerExtensions / _codecs (what
# the answer and the receiver's parameters are built from, set by setRemoteDescription),
# RTCDtlsTransport._rtp_router.route_rtp (every RTP packet of the transport, RTX and padding
# included, parsed with the negotiated extension map) and _send_rtp, and the receiver's RTCP SSRC
# (RTCRtpReceiver.__rtcp_ssrc).
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

TransportSequenceSink = Callable[[int, int, float], None]


def negotiate_transport_cc(pc: RTCPeerConnection, uri: str, *, keep_remb: bool) -> int | None:
    """Answer the transport-wide sequence number extension ``uri`` and ``transport-cc`` RTCP
    feedback wherever the remote offer (already set) has them; returns the extension's id. Without
    ``keep_remb`` those sections answer neither abs-send-time nor goog-remb, so aiortc's
    receive-side estimator sends no REMB and the sender's own congestion control alone sets its
    rate. Call between ``setRemoteDescription`` and ``createAnswer``; None when the offer has no
    transport-cc or its sections do not share one transport (BUNDLE)."""
    remote = pc.remoteDescription
    if remote is None or len(ice_transports(pc)) != 1:
        return None
    offered = {m.rtp.muxId: m for m in aiortc_sdp.SessionDescription.parse(remote.sdp).media}
    ext_id: int | None = None
    for transceiver in pc.getTransceivers():
        media = offered.get(transceiver.mid or "")
        ext = (
            None
            if media is None
            else next((e for e in media.rtp.headerExtensions if e.uri == uri), None)
        )
        if media is None or ext is None or ext_id not in (None, ext.id):
            continue
        for name in ("_headerExtensions", "_codecs"):
            if not hasattr(transceiver, name):
                raise AdapterError(f"RTCRtpTransceiver internals changed: no {name}")
        extensions = [
            e
            for e in transceiver._headerExtensions
            if e.uri != uri and (keep_remb or e.uri != ABS_SEND_TIME_URI)
        ]
        transceiver._headerExtensions = [*extensions, RTCRtpHeaderExtensionParameters(ext.id, uri)]
        remote_codecs = {c.payloadType: c for c in media.rtp.codecs}
        for codec in transceiver._codecs:  # aiortc's copies, this transceiver's own
            theirs = remote_codecs.get(codec.payloadType)
            if theirs is None or not any(f.type == "transport-cc" for f in theirs.rtcpFeedback):
                continue
            feedback = [
                f
                for f in codec.rtcpFeedback
                if f.type != "transport-cc" and (keep_remb or f.type != "goog-remb")
            ]
            codec.rtcpFeedback = [*feedback, RTCRtcpFeedback(type="transport-cc")]
        ext_id = ext.id
    return ext_id


_EARLY_ARRIVALS = 4096  # datagrams between the socket and aiortc's routing, at most


def tap_transport_sequence(
    pc: RTCPeerConnection,
    read_sequence: Callable[[bytes], int | None],
    sink: TransportSequenceSink,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``sink(transport sequence number, SSRC, arrival)`` for every RTP packet of ``pc``'s
    transport that carries one, once aiortc has authenticated and parsed it and before it routes
    it (RTX and padding-only probes reach no receiver's jitter buffer, yet the sender counts
    them). ``arrival`` is when the datagram left the socket (``read_sequence`` reads the number
    from the clear SRTP header there): aiortc queues datagrams before it decrypts them, and that
    queueing would look like network delay to the sender's congestion control. ``sink`` runs in
    aiortc's receive loop: it must not raise. On the shared port, "when it left the socket" is
    the kernel's receive stamp (``SharedUdpPort.arrival``) when ``clock`` is ``time.monotonic``:
    a datagram the port's reader got to late (the event loop busy elsewhere) keeps the time it
    came in, so a loop stall does not read as network queueing to the sender."""
    for dtls, connection in ice_transports(pc):
        now = _arrival_clock(connection) if clock is time.monotonic else clock
        router = getattr(dtls, "_rtp_router", None)
        if router is None or not hasattr(router, "route_rtp"):
            raise AdapterError("RTCDtlsTransport internals changed: no _rtp_router.route_rtp")
        if not hasattr(connection, "data_received"):
            raise AdapterError("aioice Connection internals changed: no data_received")
        early: dict[int, float] = {}
        received = connection.data_received
        route = router.route_rtp

        def data_received(
            data: bytes,
            component: int,
            received: Callable[[bytes, int], None] = received,
            early: dict[int, float] = early,
            now: Callable[[], float] = now,
        ) -> None:
            seq = read_sequence(data)
            if seq is not None:
                if len(early) >= _EARLY_ARRIVALS:
                    del early[next(iter(early))]
                early[seq] = now()
            received(data, component)

        def route_rtp(
            packet: Any,
            route: Callable[[Any], Any] = route,
            early: dict[int, float] = early,
            now: Callable[[], float] = now,
        ) -> Any:
            seq = packet.extensions.transport_sequence_number
            if seq is not None:
                arrival = early.pop(seq, None)
                sink(seq, packet.ssrc, now() if arrival is None else arrival)
            return route(packet)

        connection.data_received = data_received
        router.route_rtp = route_rtp


def _arrival_clock(connection: Any) -> Callable[[], float]:
    """``time.monotonic``, or the kernel's arrival stamp of the datagram the shared port is
    handing on (the port is looked up at the first packet: the session registers there only
    when its candidates are gathered, after the tap)."""
    ports: list[Any] = []

    def arrival() -> float:
        if not ports:
            ports.append(_shared_port(connection))
        port = ports[0]
        at: float | None = None if port is None else port.arrival
        return time.monotonic() if at is None else at

    return arrival


def _shared_port(connection: Any) -> Any | None:
    for protocol in getattr(connection, "_protocols", ()):
        transport = getattr(protocol, "transport", None)
        if isinstance(transport, _PortTransport):
            return transport._port
    return None


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the receiver's own RTCP (receiver reports, NACK, PLI) goes out with; None
    before the answer is set."""
    name = "_RTCRtpReceiver__rtcp_ssrc"
    if not hasattr(receiver, name):
        raise AdapterError("RTCRtpReceiver internals changed: no RTCP SSRC")
    ssrc: int | None = getattr(receiver, name)
    return ssrc


async def send_rtcp(receiver: RTCRtpReceiver, data: bytes) -> bool:
    """Send one RTCP packet (``data``, unprotected) on the receiver's transport; False when the
    transport is not connected (yet, or any more)."""
    try:
        await receiver.transport._send_rtp(data)
    except ConnectionError:
        return False
    return True
