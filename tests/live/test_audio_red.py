"""Opus in RED for a real headless Chromium viewer behind the test bed's lossy link (5 % loss
each way + 40 ms RTT): the answer negotiates red/48000/2 (``relay/rtc/adapter.accept_audio_red``),
every audio packet carries the two before it (``relay/media/audio_red.py``), and Chromium's
NetEq rebuilds the lost ones from the next: the link still loses ~5 % of the audio packets,
yet well under 1 % of what it plays is concealment (without RED, ~5 %: every loss concealed).
Needs root (network namespaces, TUN devices) and Chromium; skips otherwise. With
``media.viewer_audio_red = 0`` (2 by default) the lossy test fails (no copies, ~5 % concealed)."""

from __future__ import annotations

from typing import Any

from tests.support.chromium_viewer import MARKS, watch_through

pytestmark = MARKS
DEFAULTS: dict[str, str] = {}  # the shipped settings: audio RED with 2 copies


def concealed(audio: dict[str, Any]) -> float:
    return float(audio.get("concealedSamples") or 0) / max(
        1, audio.get("totalSamplesReceived") or 0
    )


def test_a_chromium_viewer_behind_loss_hears_what_the_link_lost() -> None:
    seconds = 20.0
    played, viewer = watch_through("loss5-rtt40", seconds, DEFAULTS)
    audio = played["inbound"]["audio"]
    assert audio["packetsReceived"] > 30 * seconds, audio  # it played (50 packets a second)
    assert audio["packetsLost"] > 0.02 * audio["packetsReceived"], audio  # the link lost them
    assert viewer.get("audio_red_copies", 0) > 50 * seconds, viewer
    assert concealed(audio) < 0.01, audio  # ~5 % without RED


def test_a_chromium_viewer_on_a_clean_link_conceals_nothing() -> None:
    seconds = 12.0
    played, viewer = watch_through("clean", seconds, DEFAULTS)
    audio = played["inbound"]["audio"]
    assert audio["packetsReceived"] > 30 * seconds and audio["packetsLost"] == 0, audio
    assert viewer.get("audio_red_copies", 0) > 0, viewer  # RED whenever offered, lossy or not
    assert concealed(audio) < 0.005, audio
