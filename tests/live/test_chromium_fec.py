"""ULPFEC in RED to a real headless Chromium viewer behind a lossy link (the test bed): the
answer negotiates red + ulpfec (``relay/rtc/adapter.accept_red_ulpfec``), the gateway sends
parity once the viewer's loss shows (``relay/rtc/fec_sender.py``), and Chromium's own getStats
counts the parity received and used (``fecPacketsReceived`` beyond ``fecPacketsDiscarded``: a
discarded one protected nothing it lacked), while the picture keeps playing; on a clean link the
same viewer gets no parity at all. Needs root (network namespaces, TUN devices) and Chromium;
skips otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.anchor_ramp import CHROMIUM
from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.profiles import profile
from bench.netbed.room import BedRoom

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = netns.why_unavailable()
FEC_ON = {"STAGECAST_MEDIA__VIEWER_FEC": "true"}  # off by default
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no test bed: {UNAVAILABLE}")


def watch(
    room: BedRoom, bed: NetBed, leg: str, seconds: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the Chromium viewer's page saw, and the gateway's last view of its session."""
    viewer = bed.popen(
        bed.legs[leg].ns,
        [sys.executable, "-m", "bench.netbed.chromium", room.base_url, room.room,
         "--seconds", str(seconds), "--tail", str(seconds / 2), "--fec-histograms"],
        env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    last: dict[str, Any] = {}  # the first session's (the page joins again when it is closed)
    deadline = time.monotonic() + seconds + 90
    while viewer.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
            for seen in room.viewer_counters().values():
                if not last or seen["id"] == last["id"]:
                    last = seen
        time.sleep(0.5)
    if viewer.poll() is None:
        viewer.kill()
    assert viewer.stdout is not None
    return dict(json.loads(viewer.stdout.read() or "{}")), last


def watch_through(leg_profile: str, seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A room with FEC on, its Chromium viewer behind ``leg_profile`` for ``seconds``."""
    with NetBed({"anchor": profile("clean"), "viewer": profile(leg_profile)}) as bed:
        room = BedRoom(bed, gateway_env=FEC_ON)
        try:
            room.start()
            played, viewer = watch(room, bed, "viewer", seconds)
        finally:
            room.close()
    print(json.dumps({"played": played, "gateway": viewer}, indent=1))
    return played, viewer


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_a_chromium_viewer_on_a_lossy_link_gets_and_uses_ulpfec() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed at {CHROMIUM}")
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


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(300)
def test_a_chromium_viewer_on_a_clean_link_gets_no_parity() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed at {CHROMIUM}")
    seconds = 12.0
    played, viewer = watch_through("clean", seconds)
    inbound = played["inbound"]
    assert viewer.get("fec") is True, viewer  # negotiated, RED media, but no parity
    assert viewer.get("fec_packets") == 0, viewer
    assert not played["fec_histograms"].get("WebRTC.Video.ReceivedFecPacketsInPercent"), played
    assert inbound["framesDecoded"] >= 10 * seconds, inbound
