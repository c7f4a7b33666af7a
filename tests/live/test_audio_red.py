"""Opus in RED for a real headless Chromium viewer behind the test bed's lossy link (5 % loss
each way + 40 ms RTT): the answer negotiates red/48000/2 (``adapter.accept_audio_red``), while
the viewer loses packets every audio packet carries the two before it
(``relay/media/audio_red.py``), and Chromium's NetEq rebuilds the lost ones from the next: the
link still loses ~5 % of the audio packets, yet ~1 % at most of what it plays is concealment
(without RED, ~5 %: every loss concealed). On a clean link nothing is spent on copies. Needs
root (network namespaces, TUN devices) and Chromium; skips otherwise. With
``media.viewer_audio_red = 0`` (2 by default) the lossy test fails (no copies, ~5 % concealed)."""

from __future__ import annotations

from typing import Any

from tests.support.chromium_viewer import MARKS, watch_through

pytestmark = MARKS
DEFAULTS: dict[str, str] = {}  # the shipped settings: audio RED, 2 copies while it loses


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
    assert viewer.get("audio_red") is True, viewer
    assert viewer.get("audio_red_copies", 0) > 25 * seconds, viewer  # two a packet, mostly
    assert concealed(audio) < 0.025, audio  # 5-14 % without RED (quiet-loaded bed)


def test_a_chromium_viewer_on_a_clean_link_gets_no_copies() -> None:
    seconds = 12.0
    played, viewer = watch_through("clean", seconds, DEFAULTS)
    audio = played["inbound"]["audio"]
    assert audio["packetsReceived"] > 30 * seconds and audio["packetsLost"] == 0, audio
    assert viewer.get("audio_red") is True, viewer  # negotiated,
    assert viewer.get("audio_red_copies") == 0, viewer  # and no bytes spent on it
