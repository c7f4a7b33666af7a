"""Fails loudly when an aiortc, aioice or pylibsrtp upgrade moves the internals relay/rtc/adapter.py
(and bench/ through it) relies on. One test per hook (the packetisers' is in test_mixer_units.py);
tests/unit/test_private_names.py makes sure no private name is reached anywhere else."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import struct
import threading
import time
from typing import Any
from unittest import mock

import pytest
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc import (
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    rtcpeerconnection,
    rtcrtpreceiver,
    rtcrtpsender,
    sdp,
)
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from relay.rtc.adapter import (
    SUPPORTED,
    AdapterError,
    NodeCertificate,
    _TapBuffer,
    accept_transport_cc,
    check_version,
    consent_timer,
    drop_receive_estimator,
    ice_transports,
    install_ingest_tap,
    install_traffic_consent,
    new_peer_connection,
    tap_rtcp,
    use_certificate,
    use_lazy_receive_estimators,
)
from relay.rtc.peer import close_quietly, rtc_configuration


def names_of(*functions: object) -> tuple[str, ...]:
    """Every name a function's code refers to (attributes, globals), nested functions included."""
    found: list[str] = []
    for function in functions:
        stack = [function.__code__]  # type: ignore[attr-defined]
        while stack:
            code = stack.pop()
            found += code.co_names
            stack += [c for c in code.co_consts if hasattr(c, "co_names")]
    return tuple(found)


def test_versions_in_supported_ranges() -> None:
    assert set(SUPPORTED) == {"aiortc", "aioice", "pylibsrtp"}
    check_version()


def test_ingest_tap_internals_exist() -> None:
    src = names_of(RTCRtpReceiver.__init__, RTCRtpReceiver._handle_rtp_packet)
    assert "_RTCRtpReceiver__jitter_buffer" in src and "_RTCRtpReceiver__codecs" in src
    assert "_data" in src  # packet_data: the depayloaded bytes set before the jitter buffer
    assert hasattr(RTCRtpReceiver, "_send_rtcp_pli")


def test_prepacked_sender_internals_exist() -> None:
    assert "_RTCRtpSender__encoder" in names_of(RTCRtpSender._next_encoded_frame)
    assert hasattr(RTCRtpSender, "_send_keyframe")


async def test_sendonly_receiver_estimator_can_be_dropped() -> None:
    """The hook behind ``drop_receive_estimator`` (a video receiver's 1,000-bucket rate counter),
    and aiortc's receive path still skips REMB when it is gone."""
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        receiver = pc.addTransceiver("video", direction="sendonly").receiver
        name = "_RTCRtpReceiver__remote_bitrate_estimator"
        assert getattr(receiver, name) is not None
        drop_receive_estimator(receiver)
        assert getattr(receiver, name) is None
        assert name in names_of(RTCRtpReceiver._handle_rtp_packet)
    finally:
        await close_quietly(pc)


async def test_receive_estimator_is_built_on_the_first_packet() -> None:
    """``use_lazy_receive_estimators``: aiortc's receiver builds its estimator from the module's
    name; the stand-in builds the real one only when a packet is added, and answers as it does."""
    assert "RemoteBitrateEstimator" in names_of(RTCRtpReceiver.__init__)
    use_lazy_receive_estimators()
    use_lazy_receive_estimators()  # idempotent
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        receiver = pc.addTransceiver("video", direction="sendonly").receiver
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        assert estimator._real is None  # nothing built for a receiver that never receives
        assert estimator.add(1000, 0, 1200, 1234) is None  # (abs_send_time, arrival, size, ssrc)
        real: object = estimator._real
        assert type(real) is RemoteBitrateEstimator
        assert vars(rtcrtpreceiver)["RemoteBitrateEstimator"] is not RemoteBitrateEstimator
    finally:
        await close_quietly(pc)


async def test_peer_connection_takes_the_given_certificate_and_makes_none() -> None:
    """``new_peer_connection``: aiortc's constructor asks its module's RTCCertificate for one;
    a peer connection made the ordinary way afterwards (a client in the same process) still
    gets a fresh certificate of its own, never the node's."""
    assert "RTCCertificate" in names_of(RTCPeerConnection.__init__)
    certificate = NodeCertificate.generateCertificate()
    pc = new_peer_connection(rtc_configuration(()), certificate)
    plain = RTCPeerConnection(rtc_configuration(()))
    try:
        assert pc._RTCPeerConnection__certificates == [certificate]  # type: ignore[attr-defined]
        others = plain._RTCPeerConnection__certificates  # type: ignore[attr-defined]
        assert len(others) == 1 and others[0] is not certificate
    finally:
        await close_quietly(pc)
        await close_quietly(plain)


def test_shared_port_gathering_internals_exist() -> None:
    """``install_shared_port`` replaces aioice's gather_candidates by one that keeps its
    bookkeeping without listing the host's interfaces."""
    names = names_of(Connection.gather_candidates)
    for name in ("_local_candidates_start", "_local_candidates_end", "_local_candidates"):
        assert name in names
    assert "get_component_candidates" in names and "_components" in names


async def test_node_certificate_internals_exist() -> None:
    """``use_certificate``: the peer connection's certificate list, given to each DTLS transport
    it makes; ``NodeCertificate``: the context hook every handshake calls, and its cache."""
    init = names_of(RTCPeerConnection.__init__)
    assert "_RTCPeerConnection__certificates" in init
    create = RTCPeerConnection._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]
    assert "_RTCPeerConnection__certificates" in names_of(create)
    assert "_create_ssl_context" in names_of(RTCDtlsTransport.start)
    assert "getFingerprints" in names_of(RTCDtlsTransport.getLocalParameters)
    assert callable(RTCCertificate._create_ssl_context)
    certificate = NodeCertificate.generateCertificate()
    assert isinstance(certificate, NodeCertificate)
    assert certificate._create_ssl_context(SRTP_PROFILES) is certificate._create_ssl_context(
        list(SRTP_PROFILES)
    )
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        use_certificate(pc, certificate)
        transceiver = pc.addTransceiver("video", direction="sendonly")
        dtls = transceiver.sender.transport
        assert dtls._RTCDtlsTransport__local_certificate is certificate  # type: ignore[attr-defined]
        try:
            use_certificate(pc, certificate)
        except AdapterError:
            pass
        else:
            raise AssertionError("use_certificate after a transceiver must refuse")
    finally:
        await close_quietly(pc)


def test_direct_sender_internals_exist() -> None:
    """SenderSeam's hooks: the sender's methods and SSRCs, its sender-report counters, the DTLS
    transport's state and SRTP session, the ICE connection's nominated pairs and their sockets."""
    for name in ("send", "getStats", "_retransmit", "_send_keyframe", "_handle_rtcp_packet"):
        assert callable(getattr(RTCRtpSender, name)), name
    init = names_of(RTCRtpSender.__init__)
    assert "_ssrc" in init and "_rtx_ssrc" in init
    names = names_of(RTCRtpSender._run_rtcp, RTCRtpSender.__init__)
    for name in (
        "_RTCRtpSender__ntp_timestamp",
        "_RTCRtpSender__rtp_timestamp",
        "_RTCRtpSender__packet_count",
        "_RTCRtpSender__octet_count",
        "_RTCRtpSender__rtt",  # SenderSeam.round_trip_time: the retransmission deadline
    ):
        assert name in names
    assert "_retransmit" in names_of(RTCRtpSender._handle_rtcp_packet)
    assert "_tx_srtp" in names_of(RTCDtlsTransport._send_rtp)
    assert "_state" in names_of(RTCDtlsTransport.__init__)
    assert "_connection" in names_of(RTCIceTransport.__init__)
    assert "_nominated" in names_of(Connection.sendto)
    assert "protocol" in names_of(CandidatePair.__init__)
    assert isinstance(CandidatePair.remote_addr, property)
    assert "transport" in names_of(StunProtocol.connection_made)


def test_bench_hooks_internals_exist() -> None:
    """use_bench_h264_encoder: senders get encoders from rtcrtpsender.get_encoder, and
    H264Encoder._encode_frame keeps its codec context in ``codec``/``buffer_data``/``buffer_pts``.
    divert_ice_datagrams: StunProtocol hands non-STUN datagrams to Connection.data_received."""
    assert callable(rtcrtpsender.get_encoder)
    assert "get_encoder" in names_of(RTCRtpSender._next_encoded_frame)
    encode = names_of(H264Encoder._encode_frame)
    assert {"codec", "buffer_data", "buffer_pts", "target_bitrate"} <= set(encode)
    assert isinstance(H264Encoder.__dict__["target_bitrate"], property)
    assert callable(Connection.data_received)
    assert "data_received" in names_of(StunProtocol.datagram_received)
    assert hasattr(Vp8Encoder, "_packetize")


def test_consent_by_traffic_internals_exist() -> None:
    """What ``install_traffic_consent`` replaces: aioice starts ``self.query_consent()`` as
    ``_query_consent_task`` once connected, calls ``check_incoming`` for authenticated Binding
    requests only, and aiortc calls ``_handle_rtp_data``/``_handle_rtcp_data`` only after SRTP
    unprotect succeeded."""
    connect = Connection.connect.__code__.co_names
    assert "query_consent" in connect and "_query_consent_task" in connect
    received = Connection.request_received.__code__.co_names
    assert "check_incoming" in received and "check_message_integrity" in received
    assert received.index("check_message_integrity") < received.index("check_incoming")
    assert "_query_consent_task" in Connection.close.__code__.co_names
    recv_next = RTCDtlsTransport._recv_next.__code__.co_names
    assert "_handle_rtp_data" in recv_next and "_handle_rtcp_data" in recv_next
    assert recv_next.index("unprotect_rtcp") < recv_next.index("_handle_rtcp_data")


async def test_consent_by_traffic_installs_on_each_used_transport() -> None:
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        pairs = ice_transports(pc)
        assert pairs and all(hasattr(d, "_handle_rtp_data") for d, _ in pairs)
        install_traffic_consent(pc, 7.0)
        for _, connection in pairs:
            timer = consent_timer(connection)
            assert timer is not None and timer.timeout == 7.0
            assert "query_consent" in vars(connection) and "check_incoming" in vars(connection)
    finally:
        await close_quietly(pc)


def test_shared_port_internals_exist() -> None:
    """What ``install_shared_port`` replaces or fills in on aioice's Connection, and where aiortc
    reads the ICE-lite flag it sets."""
    gather = inspect.getsource(Connection.gather_candidates)
    assert "self.get_component_candidates(" in gather and "_local_candidates_end" in gather
    received = Connection.request_received.__code__.co_names
    assert "_early_checks" in received and "_early_checks_done" in received
    end = Connection._end_remote_candidates.__code__.co_names
    assert "_check_list_maybe_fail" in end
    connect = Connection.connect.__code__.co_names
    for name in ("_check_list_state", "_early_checks", "_early_checks_done"):
        assert name in connect
    close = Connection.close.__code__.co_names
    for name in ("_check_list_state", "_check_list_done", "_protocols", "_nominated"):
        assert name in close
    assert "_nominated" in Connection.sendto.__code__.co_names
    assert "_remote_candidates" in Connection.check_incoming.__code__.co_names
    assert "_network_host" in Candidate.__init__.__code__.co_names
    assert "_local_username" in inspect.getsource(Connection.local_username.fget)
    assert "remote_addr" in dir(CandidatePair) and hasattr(CandidatePair.State, "SUCCEEDED")
    assert "connection_lost" in dir(StunProtocol) and "send_stun" in dir(StunProtocol)
    assert "receiver" in StunProtocol.__init__.__code__.co_names
    # the shared port's sink feeds the receive queue as Connection.data_received does
    assert "_queue" in Connection.data_received.__code__.co_names
    assert "put_nowait" in Connection.data_received.__code__.co_names
    assert "getLocalParameters" in inspect.getsource(rtcpeerconnection.add_transport_description)
    assert "a=ice-lite" in inspect.getsource(sdp.SessionDescription.__str__)
    start = inspect.getsource(RTCPeerConnection.setRemoteDescription)
    assert "ice_controlling = media.ice.iceLite" in start  # an offer from a full agent: controlled


def test_direct_rtp_receive_internals_exist() -> None:
    """What the shared port's direct RTP path (``_receive_rtp``) does in aiortc's place:
    ``_recv_next`` counts the datagram, takes SRTP that is not RTCP to ``_rx_srtp.unprotect``
    with an arrival time from aiortc's clock, then awaits ``_handle_rtp_data``; the counters
    are the transport's name-mangled ones."""
    recv_next = RTCDtlsTransport._recv_next.__code__.co_names
    for name in ("_rx_srtp", "unprotect", "is_rtcp", "current_ms", "_handle_rtp_data"):
        assert name in recv_next
    assert "_RTCDtlsTransport__rx_bytes" in recv_next
    assert "_RTCDtlsTransport__rx_packets" in recv_next
    assert "_rx_srtp" in RTCDtlsTransport._setup_srtp.__code__.co_names
    assert "CONNECTED" in inspect.getsource(RTCDtlsTransport.start)


def _recorder(out: list[bytes]) -> object:
    async def handle(data: bytes) -> None:
        out.append(data)

    return handle


async def test_transport_cc_is_answered_and_rtcp_is_tapped() -> None:
    """Chromium's WHEP offer: the answer carries the transport-wide sequence number extension
    (the offer's id) and ``transport-cc`` on the codecs, and the send parameters have it (the
    direct sender writes it); every RTCP datagram reaches the tap before aiortc parses it."""
    from relay.media.cc_feedback import TRANSPORT_CC_URIS, build_remb
    from tests.support.offers import fixture

    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        video = pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setRemoteDescription(
            rtcpeerconnection.RTCSessionDescription(fixture("chromium_whep.sdp"), "offer")
        )
        assert accept_transport_cc(pc, TRANSPORT_CC_URIS)
        assert accept_transport_cc(pc, TRANSPORT_CC_URIS)  # twice: nothing added twice
        answer = sdp.SessionDescription.parse((await pc.createAnswer()).sdp)
        for media in answer.media:
            uris = [e.uri for e in media.rtp.headerExtensions]
            assert uris.count(TRANSPORT_CC_URIS[0]) == 1, uris
            for c in media.rtp.codecs:  # those Chromium offers it for: once each
                want = int(c.name in ("VP8", "H264", "opus"))
                assert [f.type for f in c.rtcpFeedback].count("transport-cc") == want, c
        assert any(e.uri == TRANSPORT_CC_URIS[0] and e.id == 4 for e in video._headerExtensions)
        seen: list[bytes] = []
        passed: list[bytes] = []
        for dtls, _ in ice_transports(pc):  # what aiortc's own handler gets
            dtls._handle_rtcp_data = _recorder(passed)

        def tap(data: bytes) -> bytes:
            seen.append(data)
            return data[:-4] if len(data) > 20 else b""

        tap_rtcp(pc, tap)
        remb = build_remb(500_000, (1,))
        for dtls, _ in ice_transports(pc):
            await dtls._handle_rtcp_data(remb)
            await dtls._handle_rtcp_data(remb[:20])
        assert seen == [remb, remb[:20]]
        assert passed == [remb[:-4]]  # aiortc gets what the tap returns, nothing when empty
    finally:
        await close_quietly(pc)


def test_transport_cc_internals_exist() -> None:
    """What the transport-cc hooks rely on: aiortc builds the answer and the receiver's
    parameters from the transceiver's ``_headerExtensions``/``_codecs``, parses the
    transport-wide sequence number of the URI we answer, routes every parsed RTP packet
    through ``_rtp_router.route_rtp``, and aioice hands each datagram to the connection's
    ``data_received``."""
    from aioice.ice import StunProtocol as Protocol
    from aiortc.rtp import HeaderExtensionsMap

    from relay.media.twcc_feedback import TRANSPORT_CC_URI

    local_rtp = rtcpeerconnection.RTCPeerConnection._RTCPeerConnection__localRtp  # type: ignore[attr-defined]
    remote_rtp = rtcpeerconnection.RTCPeerConnection._RTCPeerConnection__remoteRtp  # type: ignore[attr-defined]
    for fn in (local_rtp, remote_rtp):
        assert {"_headerExtensions", "_codecs"} <= set(fn.__code__.co_names)
    assert TRANSPORT_CC_URI in HeaderExtensionsMap.configure.__code__.co_consts
    handle = RTCDtlsTransport._handle_rtp_data.__code__.co_names
    assert "_rtp_router" in handle and "route_rtp" in handle
    assert "data_received" in Protocol.datagram_received.__code__.co_names
    assert "_send_rtp" in RTCRtpReceiver._send_rtcp.__code__.co_names


def _chromium_offer() -> str:
    from pathlib import Path

    from relay.rtc.sdp import strip_mdns_candidates

    path = Path(__file__).resolve().parents[1] / "support" / "sdp_offers" / "chromium_whip.sdp"
    return strip_mdns_candidates(path.read_text())


async def _answer(offer: str, *, keep_remb: bool) -> tuple[int | None, str]:
    from aiortc import RTCSessionDescription

    from relay.media.twcc_feedback import TRANSPORT_CC_URI
    from relay.rtc.adapter import negotiate_transport_cc

    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        ext_id = negotiate_transport_cc(pc, TRANSPORT_CC_URI, keep_remb=keep_remb)
        answer = await pc.createAnswer()
        return ext_id, answer.sdp
    finally:
        await close_quietly(pc)


async def test_transport_cc_is_not_answered_to_an_offer_without_it() -> None:
    from relay.media.cc_feedback import TRANSPORT_CC_URIS
    from tests.support.offers import fixture

    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setRemoteDescription(
            rtcpeerconnection.RTCSessionDescription(fixture("aiortc_whep.sdp"), "offer")
        )
        assert not accept_transport_cc(pc, TRANSPORT_CC_URIS)
        assert "transport-cc" not in (await pc.createAnswer()).sdp
    finally:
        await close_quietly(pc)


async def test_transport_cc_is_answered_where_offered() -> None:
    from relay.media.twcc_feedback import TRANSPORT_CC_URI

    ext_id, answer = await _answer(_chromium_offer(), keep_remb=False)
    assert ext_id == 3
    assert answer.count(f"a=extmap:3 {TRANSPORT_CC_URI}") == 2  # audio and video
    fb = [line for line in answer.splitlines() if line.startswith("a=rtcp-fb:")]
    assert any(line.endswith(" transport-cc") for line in fb)
    assert "a=rtcp-fb:111 transport-cc" in fb  # Opus too: all packets count
    assert "abs-send-time" not in answer and "goog-remb" not in answer  # no REMB beside it
    _, kept = await _answer(_chromium_offer(), keep_remb=True)
    assert "abs-send-time" in kept and "goog-remb" in kept and "transport-cc" in kept


async def test_transport_cc_is_not_answered_where_not_offered() -> None:
    """ffmpeg and OBS offer abs-send-time and goog-remb only: they keep aiortc's REMB."""
    offer = "\n".join(
        line
        for line in _chromium_offer().splitlines()
        if "transport-wide" not in line and "transport-cc" not in line
    )
    ext_id, answer = await _answer(offer + "\n", keep_remb=False)
    assert ext_id is None
    assert "transport-cc" not in answer and "goog-remb" in answer and "abs-send-time" in answer


async def test_transport_sequence_tap_times_packets_when_they_leave_the_socket() -> None:
    from aiortc import RTCSessionDescription
    from aiortc.rtp import RtpPacket

    from relay.media.twcc_feedback import TRANSPORT_CC_URI, transport_sequence_number
    from relay.rtc.adapter import negotiate_transport_cc, tap_transport_sequence

    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        offer = _chromium_offer()
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        assert negotiate_transport_cc(pc, TRANSPORT_CC_URI, keep_remb=False) == 3
        seen: list[tuple[int, int, float]] = []
        now = [10.0]
        tap_transport_sequence(
            pc,
            lambda data: transport_sequence_number(data, 3),
            lambda *args: seen.append(args),
            lambda: now[0],
        )
        ((dtls, connection),) = ice_transports(pc)
        # an SRTP packet's header as it comes off the socket: extension id 3 = 0x0102
        header = struct.pack("!BBHII", 0x90, 96, 1, 0, 1234)
        raw = header + struct.pack("!HH", 0xBEDE, 1) + bytes([0x31, 0x01, 0x02, 0]) + b"x" * 20
        connection.data_received(raw, 1)  # off the socket at 10.0
        now[0] = 10.5  # aiortc decrypts and routes it later
        packet = RtpPacket(payload_type=96, sequence_number=1, ssrc=1234)
        packet.extensions.transport_sequence_number = 0x0102
        dtls._rtp_router.route_rtp(packet)
        plain = RtpPacket(payload_type=96, sequence_number=2, ssrc=1234)
        plain.extensions.transport_sequence_number = 0x0103  # never seen on the socket
        dtls._rtp_router.route_rtp(plain)
        assert seen == [(0x0102, 1234, 10.0), (0x0103, 1234, 10.5)]
    finally:
        await close_quietly(pc)


def test_keyframe_resync_buffer_starts_over_at_a_keyframe_past_a_hole() -> None:
    """aiortc's own buffer holds everything behind a packet that never comes; the bench
    viewers' (``--resync``) decode from the next keyframe, as browsers do."""
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtp import RtpPacket

    from relay.rtc.adapter import keyframe_resync_buffer

    def packet(seq: int, ts: int, payload: bytes) -> RtpPacket:
        p = RtpPacket(sequence_number=seq, timestamp=ts, payload=payload)
        p._data = payload  # what aiortc's receiver sets (the depayloaded bytes)
        return p

    def feed(buffer: JitterBuffer) -> list[int]:
        out = []
        # frame 1 (two packets), frame 2 loses its second packet (seq 4) for good, then a
        # keyframe (seq 5, 6) and a frame after it (seq 7) to release it
        for seq, ts, payload in [
            (1, 100, b"a"), (2, 100, b"b"), (3, 200, b"c"), (5, 300, b"K"), (6, 300, b"k"),
            (7, 400, b"d"), (8, 500, b"e"),
        ]:  # fmt: skip
            _, frame = buffer.add(packet(seq, ts, payload))
            if frame is not None:
                out.append(frame.timestamp)
        return out

    assert feed(JitterBuffer(capacity=512, is_video=True)) == [100]  # stuck behind seq 4
    resync = keyframe_resync_buffer(lambda payload: payload == b"K")
    assert feed(resync(capacity=512, is_video=True)) == [100, 300, 400]


def test_nack_request_internals_exist() -> None:
    """What ``install_nack_requests`` and ``send_nack`` reach: the video receiver's NACK
    generator (``add`` then ``missing`` on its receive path) and its RTCP NACK sender."""
    receive = names_of(RTCRtpReceiver._handle_rtp_packet)
    for name in ("_RTCRtpReceiver__nack_generator", "add", "missing", "_send_rtcp_nack"):
        assert name in receive, name
    assert "_RTCRtpReceiver__nack_generator" in names_of(RTCRtpReceiver.__init__)


# aiortc's RTCRtpReceiver._handle_rtp_packet as ``_tapped_rtp_handler`` copies it (1.14-1.16):
# a name more or fewer means the upgrade changed what a received packet goes through.
HANDLE_RTP_NAMES = {
    "RTCP_PSFB_APP", "RtcpPsfbPacket", "StreamStatistics", "ValueError",
    "_RTCRtpReceiver__active_ssrc", "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__decoder_error",
    "_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__decoder_thread",
    "_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__kind", "_RTCRtpReceiver__log_debug",
    "_RTCRtpReceiver__nack_generator", "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__remote_streams", "_RTCRtpReceiver__rtcp_ssrc", "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__timestamp_mapper", "_data", "_enabled", "_send_rtcp", "_send_rtcp_nack",
    "_send_rtcp_pli", "abs_send_time", "add", "clear", "clock", "clockRate", "current_datetime",
    "depayload", "extensions", "get", "int", "is_rtx", "is_set", "isinstance", "len", "map",
    "missing", "pack_remb_fci", "padding_size", "parameters", "payload", "payload_type", "put",
    "sorted", "ssrc", "timestamp", "unwrap_rtx",
}  # fmt: skip


async def test_tapped_receiver_starts_no_decoder_thread() -> None:
    """aiortc's ``receive`` starts a decoder thread from its module's ``threading`` name; a
    tapped receiver gets a stand-in (no thread), an untapped one the real thread, and stopping
    either ends its remote track."""
    assert "threading" in names_of(RTCRtpReceiver.receive)
    assert "_RTCRtpReceiver__decoder_queue" in names_of(RTCRtpReceiver.receive)
    codec = RTCRtpCodecParameters("video/H264", 90000, payloadType=96)
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        for tapped, threads in ((True, 0), (False, 1)):
            receiver = pc.addTransceiver("video", direction="recvonly").receiver
            receiver._track = RemoteStreamTrack(kind="video")  # as setRemoteDescription does
            if tapped:
                install_ingest_tap(receiver, lambda packet, codec: None)
            await receiver.receive(
                RTCRtpReceiveParameters(
                    codecs=[codec], encodings=[RTCRtpDecodingParameters(1234, 96)]
                )
            )
            running = [t for t in threading.enumerate() if t.name == "video-decoder"]
            assert len(running) == threads
            await asyncio.wait_for(receiver.stop(), 5)
            with pytest.raises(MediaStreamError):
                await asyncio.wait_for(receiver.track.recv(), 5)
            assert not any(t.name == "video-decoder" for t in threading.enumerate())
    finally:
        await close_quietly(pc)


def test_tapped_receiver_handler_copies_aiortcs() -> None:
    assert set(RTCRtpReceiver._handle_rtp_packet.__code__.co_names) == HANDLE_RTP_NAMES


def _receive_sequence() -> list[RtpPacket]:
    """H264 packets 1..6 on SSRC 1111 without 3, then 3 as RTX (SSRC 2222), a packet of an
    unknown payload type, and an empty RTX probe."""
    packets = []
    for seq in (1, 2, 4, 5, 6):
        marker = seq % 2 == 0
        packets.append(RtpPacket(96, marker, seq, 3000 * seq, 1111, bytes([0x65, seq] * 50)))
    packets.append(RtpPacket(97, False, 77, 9000, 2222, struct.pack("!H", 3) + bytes([0x65, 3])))
    packets.append(RtpPacket(100, False, 7, 21000, 1111, b"\x65\x00"))
    packets.append(RtpPacket(97, False, 78, 9000, 2222, b""))
    return packets


async def _run_receiver(tapped: bool) -> tuple[list[tuple[int, int, int, bytes]], list[Any]]:
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        receiver._RTCRtpReceiver__codecs = {  # type: ignore[attr-defined]
            96: RTCRtpCodecParameters("video/H264", 90000, payloadType=96),
            97: RTCRtpCodecParameters("video/rtx", 90000, payloadType=97, parameters={"apt": 96}),
        }
        receiver._RTCRtpReceiver__rtx_ssrc = {2222: 1111}  # type: ignore[attr-defined]
        got: list[tuple[int, int, int, bytes]] = []
        nacks: list[Any] = []

        def sink(packet: Any, codec: RTCRtpCodecParameters) -> None:
            got.append((packet.sequence_number, codec.payloadType or 0, packet.ssrc, packet._data))

        async def nack(ssrc: int, lost: list[int]) -> None:
            nacks.append((ssrc, lost))

        receiver._send_rtcp_nack = nack  # type: ignore[method-assign, assignment]
        if tapped:
            install_ingest_tap(receiver, sink)
        else:  # aiortc's own handling, the tap only where the jitter buffer was
            receiver._RTCRtpReceiver__jitter_buffer = _TapBuffer(receiver, sink)  # type: ignore[attr-defined]
        # aiortc's jitter statistic reads time.time() per packet: packets 1 ms apart on a clock
        # of the test's own, so both runs see the same arrivals whatever the machine does
        arrivals = itertools.count(1000.0, 0.001)
        with mock.patch.object(time, "time", lambda: next(arrivals)):
            for packet in _receive_sequence():
                await receiver._handle_rtp_packet(packet, arrival_time_ms=1000)
        streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stats = {
            ssrc: (s.packets_received, s.max_seq, s.packets_lost, s.jitter)
            for ssrc, s in streams.items()
        }
        active = sorted(receiver._RTCRtpReceiver__active_ssrc)  # type: ignore[attr-defined]
        return got, [nacks, stats, active]
    finally:
        await close_quietly(pc)


async def test_tapped_receiver_handles_packets_as_aiortc_does() -> None:
    """The same packets through aiortc's handler and the tapped one: the same packets reach the
    sink (RTX unwrapped, depayloaded), the same NACKs go out, the same RTCP statistics."""
    theirs = await _run_receiver(tapped=False)
    ours = await _run_receiver(tapped=True)
    assert [g[0] for g in ours[0]] == [1, 2, 4, 5, 6, 3]  # 3 from its retransmission
    assert {(g[1], g[2]) for g in ours[0]} == {(96, 1111)}
    assert ours[1][0] == [(1111, [3])]  # the hole was NACKed once
    assert ours == theirs
