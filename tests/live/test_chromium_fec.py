"""ULPFEC in RED to a real headless Chromium viewer behind a lossy link (the test bed): the
answer negotiates red + ulpfec (``relay/rtc/adapter.accept_red_ulpfec``), the gateway sends
parity once the viewer's loss shows (``relay/rtc/fec_sender.py``), and Chromium's own getStats
counts the parity received and used (``fecPacketsReceived`` beyond ``fecPacketsDiscarded``: a
discarded one protected nothing it lacked), while the picture keeps playing; on a clean link the
same viewer gets no parity at all. Needs root (network namespaces, TUN devices) and Chromium;
skips otherwise."""

from __future__ import annotations

from typing import Any

from tests.support import chromium_viewer

FEC_ON = {"STAGECAST_MEDIA__VIEWER_FEC": "true"}  # off by default
pytestmark = chromium_viewer.MARKS


def watch_through(leg_profile: str, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A room with FEC on, its Chromium viewer behind ``leg_profile`` for ``seconds``."""
    return chromium_viewer.watch_through(leg_profile, seconds, FEC_ON, "--fec-histograms")


def test_a_chromium_viewer_on_a_lossy_link_gets_and_uses_ulpfec() -> None:
    seconds = 20.0
    played, viewer = watch_through("loss5-rtt40", seconds)
    inbound = played["inbound"]
    assert viewer.get("fec") is True, viewer  # negotiated
    assert viewer.get("fec_packets", 0) > 0 and viewer.get("fec_loss", 0) > 0.01, viewer
    assert inbound["packetsLost"] > 0, inbound  # the link did lose
    fec = played["fec_histograms"]  # getStats has no ULPFEC counters for video: libwebrtc's
    assert fec.get("WebRTC.Video.ReceivedFecPacketsInPercent", 0) > 2, fec
    assert fec.get("WebRTC.Video.RecoveredMediaPacketsInPercentOfFec", 0) > 0, fec  # repairs
    assert inbound["framesDecoded"] >= 10 * seconds, inbound  # plays (the machine sets the rate)
    assert played["state"] == "playing", played


def test_a_chromium_viewer_on_a_clean_link_gets_no_parity() -> None:
    seconds = 12.0
    played, viewer = watch_through("clean", seconds)
    inbound = played["inbound"]
    assert viewer.get("fec") is True, viewer  # negotiated, RED media, but no parity
    assert viewer.get("fec_packets") == 0, viewer
    assert not played["fec_histograms"].get("WebRTC.Video.ReceivedFecPacketsInPercent"), played
    assert inbound["framesDecoded"] >= 10 * seconds, inbound
