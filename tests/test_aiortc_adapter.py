"""Fails loudly when an aiortc upgrade moves the internals relay/aiortc_adapter.py relies on."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender

from gateway.synthetic import StampedVideoTrack
from relay.aiortc_adapter import check_version, install_ingest_tap, install_prepacked_sender
from relay.peer import close_quietly, rtc_configuration


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


async def test_tap_sees_packets_and_pli_reaches_hook() -> None:
    """Two real peers: the tap gets depayloaded packets with marker bits, a PLI from the
    receiving side reaches a pre-packed sender's hook."""
    a, b = RTCPeerConnection(rtc_configuration(())), RTCPeerConnection(rtc_configuration(()))
    markers: list[int] = []
    try:
        a.addTransceiver(StampedVideoTrack(320, 180, 30), direction="sendonly")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        receiver = b.getTransceivers()[0].receiver
        install_ingest_tap(receiver, lambda p, c: markers.append(p.marker) if p._data else None)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        for _ in range(100):
            if sum(markers) >= 5:
                break
            await asyncio.sleep(0.05)
        assert sum(markers) >= 5
        hits: list[int] = []
        install_prepacked_sender(a.getSenders()[0], lambda: hits.append(1))
        ssrc = a.getSenders()[0]._ssrc
        await receiver._send_rtcp_pli(ssrc)
        for _ in range(40):
            if hits:
                break
            await asyncio.sleep(0.05)
        assert hits
    finally:
        await close_quietly(a)
        await close_quietly(b)
