"""Repairs without a NACK for a real headless Chromium viewer behind the test bed's lossy link
(5 % loss each way + 40 ms RTT): its transport-cc feedback reports packets lost whose NACK was
lost on the uplink, and the gateway resends them (``relay/media/feedback_repair.py``), while
the NACKs that did come are answered as before (most losses are NACKed: nothing is resent
twice for them); on a clean link nothing is reported lost and nothing is resent. Needs root
(network namespaces, TUN devices) and Chromium; skips otherwise. With
``media.viewer_feedback_repair = false`` (on by default) the lossy test fails (no repairs)."""

from __future__ import annotations

from tests.support.chromium_viewer import MARKS, watch_through

pytestmark = MARKS
DEFAULTS: dict[str, str] = {}  # the shipped settings: feedback repair on


def test_a_chromium_viewer_whose_nack_was_lost_gets_the_packet_anyway() -> None:
    seconds = 20.0
    played, viewer = watch_through("loss5-rtt40", seconds, DEFAULTS)
    lost, unasked = viewer.get("feedback_lost", 0), viewer.get("feedback_unasked", 0)
    assert lost > 20, viewer  # the feedback told the losses (~5 % of ~100 packets a second)
    assert 0 < unasked < lost / 2, viewer  # some NACKs lost, most came: those are not repaired
    assert 0 < viewer.get("feedback_repairs", 0) <= unasked, viewer
    inbound = played["inbound"]
    assert inbound["packetsLost"] > 0 and inbound["nackCount"] > 0, inbound
    assert inbound["framesDecoded"] >= 10 * seconds, inbound  # plays (the machine sets the rate)


def test_a_chromium_viewer_on_a_clean_link_gets_no_repair() -> None:
    seconds = 12.0
    played, viewer = watch_through("clean", seconds, DEFAULTS)
    assert viewer.get("transport_cc") is True, viewer
    assert viewer.get("feedback_unasked") == 0 and viewer.get("feedback_repairs") == 0, viewer
    assert played["inbound"]["framesDecoded"] >= 10 * seconds, played
