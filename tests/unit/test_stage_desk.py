"""The stage desk (raised hands -> approve/refuse -> on stage -> back), on a fake clock."""

from __future__ import annotations

import pytest

from gateway.stage.guests import DeskLimits, StageDesk
from relay.errors import Conflict, NotFound, TooManyRequests


def test_a_hand_goes_through_approve_join_and_leave() -> None:
    desk = StageDesk()
    hand, events = desk.ask("r", "Ann", "alice", "sub:alice", 100.0)
    assert [e.kind for e in events] == ["stage.request"]
    assert hand.state == "pending" and hand.subject == f"guest-{hand.id}" and hand.key
    approved = desk.decide("r", hand.id, True, "host", 101.0, token_ttl=60)
    assert approved.kind == "stage.approved" and approved.request.token_expires_at == 161.0
    assert desk.seats_taken("r") == 1 and desk.is_guest("r", hand.subject)
    assert not desk.is_guest("other", hand.subject)
    joined = desk.anchor_joined("r", hand.subject, "A1", 102.0)
    assert [e.kind for e in joined] == ["stage.joined"]
    assert desk.get("r", hand.id).anchor_id == "A1" and desk.seats_taken("r") == 0
    assert desk.anchor_joined("r", hand.subject, "A1", 102.5) == []  # once
    left = desk.leave("r", hand.id, 103.0)
    assert left.kind == "stage.left" and left.request.state == "left"
    # its WHIP session ending afterwards reports nothing more
    assert desk.anchor_left("r", hand.subject, "A1", "deleted", 103.1) == []
    versions = [hand.version, approved.request.version, left.request.version]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_bad_steps_are_refused() -> None:
    desk = StageDesk()
    hand, _ = desk.ask("r", "Ann", "alice", "k", 0.0)
    withdrawn = desk.leave("r", hand.id, 1.0)
    assert withdrawn.request.state == "withdrawn"
    with pytest.raises(Conflict):  # approving a withdrawn request
        desk.decide("r", hand.id, True, "host", 2.0, token_ttl=60)
    with pytest.raises(NotFound):
        desk.decide("r", "nope", True, "host", 2.0, token_ttl=60)
    with pytest.raises(NotFound):  # a request of another room
        desk.get("s", hand.id)
    other, _ = desk.ask("r", "Bob", "bob", "k2", 3.0)
    desk.decide("r", other.id, True, "host", 3.0, token_ttl=60)
    with pytest.raises(Conflict):  # a second approval
        desk.decide("r", other.id, True, "host", 3.1, token_ttl=60)
    with pytest.raises(Conflict):  # leaving twice
        desk.leave("r", hand.id, 4.0)
    refused, _ = desk.ask("r", "Cy", "cy", "k3", 5.0)
    removed = desk.leave("r", refused.id, 5.1, by="host")  # staff on a pending one: refused
    assert removed.kind == "stage.refused" and removed.request.decided_by == "host"


def test_a_flood_of_hands_is_rate_limited_per_requester_and_per_room() -> None:
    desk = StageDesk(DeskLimits(per_requester_rate=0.5, per_requester_burst=2, max_open=3))
    desk.ask("r", "a", "x", "k", 0.0)
    desk.ask("r", "a", "x", "k", 0.0)
    with pytest.raises(TooManyRequests) as exc:
        desk.ask("r", "a", "x", "k", 0.1)
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "2"
    desk.ask("s", "a", "x", "k", 0.1)  # another room: its own allowance
    desk.ask("r", "b", "y", "k-other", 0.2)  # another requester in the room
    with pytest.raises(TooManyRequests):  # the room holds 3 open requests
        desk.ask("r", "c", "z", "k-third", 0.3)


def test_an_unused_approval_expires_and_finished_requests_are_forgotten() -> None:
    desk = StageDesk(DeskLimits(keep_finished=10))
    hand, _ = desk.ask("r", "Ann", "alice", "k", 0.0)
    desk.decide("r", hand.id, True, "host", 1.0, token_ttl=30)
    assert desk.sweep(30.0) == []
    [expired] = desk.sweep(31.5)
    assert expired.kind == "stage.left" and expired.request.state == "expired"
    assert desk.anchor_joined("r", hand.subject, "A1", 32.0) == []  # too late: not on stage
    desk.sweep(50.0)
    with pytest.raises(NotFound):
        desk.get("r", hand.id)
    assert desk.by_subject(hand.subject) is None


def test_the_guests_own_session_ending_takes_it_off_stage_but_a_takeover_does_not() -> None:
    desk = StageDesk()
    hand, _ = desk.ask("r", "Ann", "alice", "k", 0.0)
    desk.decide("r", hand.id, True, "host", 0.0, token_ttl=60)
    desk.anchor_joined("r", hand.subject, "A1", 1.0)
    assert desk.anchor_left("r", hand.subject, "A1", "replaced", 2.0) == []
    assert desk.anchor_left("r", "someone-else", "A1", "deleted", 2.0) == []
    [left] = desk.anchor_left("r", hand.subject, "A1", "media timeout", 3.0)
    assert left.request.state == "left" and left.request.reason == "media timeout"
    assert left.data()["reason"] == "media timeout" and left.data()["anchor_id"] == "A1"


def test_a_hand_nobody_answers_is_lowered() -> None:
    desk = StageDesk(DeskLimits(pending_timeout=60))
    hand, _ = desk.ask("r", "Ann", "alice", "k", 0.0)
    assert desk.sweep(59.0) == []
    [lowered] = desk.sweep(61.0)
    assert lowered.kind == "stage.left" and lowered.request.state == "expired"
    assert lowered.request.reason == "no answer"
    with pytest.raises(Conflict):
        desk.decide("r", hand.id, True, "host", 62.0, token_ttl=60)
