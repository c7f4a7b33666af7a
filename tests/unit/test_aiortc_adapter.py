"""Fails loudly when an aiortc upgrade moves the internals relay/rtc/adapter.py relies on."""

from __future__ import annotations

from aioice.ice import Connection
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

from relay.rtc.adapter import (
    check_version,
    drop_receive_estimator,
)
from relay.rtc.peer import close_quietly, rtc_configuration


def test_version_in_supported_range() -> None:
    check_version()


def test_private_attributes_exist() -> None:
    src = (
        RTCRtpReceiver.__init__.__code__.co_names
        + RTCRtpReceiver._handle_rtp_packet.__code__.co_names
    )
    assert "_RTCRtpReceiver__jitter_buffer" in src and "_RTCRtpReceiver__codecs" in src
    assert "_RTCRtpSender__encoder" in RTCRtpSender._next_encoded_frame.__code__.co_names
    assert hasattr(RTCRtpSender, "_send_keyframe") and hasattr(RTCRtpReceiver, "_send_rtcp_pli")


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
        assert name in RTCRtpReceiver._handle_rtp_packet.__code__.co_names
    finally:
        await close_quietly(pc)


def test_direct_sender_internals_exist() -> None:
    names = RTCRtpSender._run_rtcp.__code__.co_names + RTCRtpSender.__init__.__code__.co_names
    for name in (
        "_RTCRtpSender__ntp_timestamp",
        "_RTCRtpSender__rtp_timestamp",
        "_RTCRtpSender__packet_count",
        "_RTCRtpSender__octet_count",
    ):
        assert name in names
    assert "_retransmit" in RTCRtpSender._handle_rtcp_packet.__code__.co_names
    assert "_tx_srtp" in RTCDtlsTransport._send_rtp.__code__.co_names
    assert "_nominated" in Connection.sendto.__code__.co_names
