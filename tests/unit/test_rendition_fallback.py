"""The rendition fallback policy (pure): down on repeated congestion only, back up after a quiet
hold; tests/live/test_rendition_fallback.py runs it with a lossy viewer."""

from __future__ import annotations

from relay.media.fallback import FallbackPolicy


def test_policy_steps_down_on_repeated_congestion_only() -> None:
    p = FallbackPolicy(threshold=3, window=10.0)
    assert not p.observe("v", 0, 0.0)
    assert not p.observe("v", 1, 1.0)
    assert not p.observe("v", 1, 2.0)
    assert not p.observe("v", 2, 20.0)  # the first event has aged out
    assert not p.observe("v", 3, 21.0)
    assert p.observe("v", 4, 22.0)
    p.moved("v", 22.0)
    assert not p.observe("v", 5, 23.0)  # judged afresh on the new rendition
    p.forget("v")
    assert not p.observe("v", 100, 24.0)  # a new viewer starts from its current count


def test_policy_steps_back_up_after_a_quiet_hold_and_backs_off() -> None:
    p = FallbackPolicy(threshold=1, window=10.0, hold=5.0, settle=30.0, max_hold=12.0)
    assert not p.observe("v", 0, -1.0)
    assert p.observe("v", 1, 0.0)
    p.moved("v", 0.0)
    assert not p.should_step_up("v", 4.0)
    p.observe("v", 2, 3.0)  # still congested on the lower rendition: the hold restarts
    assert not p.should_step_up("v", 7.0) and p.should_step_up("v", 8.0)
    p.moved("v", 8.0, down=False)
    assert not p.should_step_up("v", 100.0)  # back at the top: nothing above to try
    assert p.observe("v", 3, 10.0)  # falls right back: the link cannot carry it
    p.moved("v", 10.0)
    assert not p.should_step_up("v", 19.0) and p.should_step_up("v", 20.0)  # hold 5 -> 10
    p.moved("v", 20.0, down=False)
    p.observe("v", 4, 21.0)
    p.moved("v", 21.0)
    assert not p.should_step_up("v", 32.0) and p.should_step_up("v", 33.0)  # capped at 12
