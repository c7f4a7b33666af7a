"""relay.media.consent on a fake clock."""

from __future__ import annotations

from relay.media.consent import ConsentTimer


def test_consent_expires_after_silence_and_traffic_renews_it() -> None:
    timer = ConsentTimer(5.0, 100.0)
    assert not timer.expired(104.9) and timer.deadline == 105.0
    timer.seen(103.0)
    assert not timer.expired(107.9) and timer.expired(108.0)
    timer.seen(102.0)  # an older time never moves the deadline back
    assert timer.deadline == 108.0
