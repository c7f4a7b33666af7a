"""Guests on a room's stage (cross-room links, gateway/stage/links.py drives them), call rooms
(no mixing), the participants list, and who may watch a room (an anchor of it may)."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.api_call import PARTICIPANTS_COMMAND, ParticipantNotices, participants
from gateway.settings import Settings
from gateway.stage.anchor_hub import AnchorHub
from gateway.stage.room import RoomService
from gateway.stage.table import RoomConfig, StageTable
from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.errors import Conflict, Forbidden
from relay.media.frames import CodecSpec
from relay.media.stream_key import StreamKey
from relay.messages.bus import MemoryBus
from relay.messages.service import RoomChannels
from tests.unit.test_session_timers import Anchor, room_bench

VP8 = {"video": CodecSpec("video", "VP8", 90000)}


def guest(anchor_id: str, room: str = "b") -> Anchor:
    return Anchor(anchor_id, room, "", AnchorHub(StreamKey(room, anchor=anchor_id), VP8))


async def test_a_guest_joins_the_mix_and_leaves_it() -> None:
    bench = room_bench()
    rooms = bench.rooms
    bench.join("a", "a1", "alice")
    program = rooms.rooms["a"]
    assert program.director.mode == "passthrough"
    g = guest("x1")
    rooms.add_guest("a", g)
    assert [f.id for f in program.feeds()] == ["a1", "x1"]
    assert program.director.mode == "mixed"
    assert [p.anchor_id for p in participants(rooms, "a").participants] == ["a1", "x1"]
    assert participants(rooms, "a").participants[1].guest
    with pytest.raises(Conflict):
        rooms.add_guest("a", guest("x1"))  # the same anchor twice
    with pytest.raises(Conflict):
        rooms.add_guest("a", guest("a1", room="a"))  # one of the room's own
    with pytest.raises(Conflict):
        rooms.add_guest("nowhere", guest("x2"))  # not live
    rooms.remove_guest("a", "x1")
    assert [f.id for f in program.feeds()] == ["a1"]
    assert program.director.mode == "passthrough"
    await rooms.shutdown()


async def test_the_stage_limit_counts_guests() -> None:
    rooms = RoomService(Settings(stage={"max_anchors": 2}), StageTable())
    bench = room_bench()
    bench.rooms = rooms
    bench.join("a", "a1", "alice")
    rooms.add_guest("a", guest("x1"))
    with pytest.raises(Conflict, match="full"):
        rooms.add_guest("a", guest("x2"))
    await rooms.shutdown()


async def test_one_seat_count_for_anchors_links_and_guests_held_seats() -> None:
    """``stage.max_anchors`` bounds the room's anchors, linked anchors of other rooms and the
    seats held for approved stage guests together: none of them takes another's seat."""
    rooms = RoomService(Settings(stage={"max_anchors": 3}), StageTable())
    bench = room_bench()
    bench.rooms = rooms
    held = {"a": 1}  # one approved guest, not publishing yet
    rooms.held_seats = lambda room: held.get(room, 0)
    bench.join("a", "a1", "alice")
    rooms.add_guest("a", guest("x1"))
    assert rooms.seats_used("a") == 2
    with pytest.raises(Conflict, match="full"):  # the third seat is the guest's
        rooms.add_guest("a", guest("x2"))
    held["a"] = 0  # the guest publishes: an anchor of the room
    bench.join("a", "a2", "guest")
    assert rooms.seats_used("a") == 3
    stage = rooms.stages.get("a")
    assert stage is not None
    with pytest.raises(Conflict, match="maximum"):  # a link counts against a new anchor too
        rooms.reserve(stage, "a3")
    await rooms.shutdown()


async def test_a_guest_is_off_the_stage_while_no_own_anchor_is_and_the_end_is_told() -> None:
    bench = room_bench(grace=5.0)
    rooms = bench.rooms
    ended: list[str] = []
    rooms.program_ended.append(ended.append)
    a1 = bench.join("a", "a1", "alice")
    rooms.add_guest("a", guest("x1"))
    bench.leave(a1, "connection failed")  # the grace holds the program
    program = rooms.rooms["a"]
    assert program.feeds() == [] and program.director.mode == "idle"
    assert ended == []
    rooms.handle_timer(bench.clock.now + 5.0)
    assert ended == ["a"] and "a" not in rooms.rooms
    await rooms.shutdown()


async def test_a_call_room_never_mixes() -> None:
    bench = room_bench()
    rooms = bench.rooms
    rooms.stages.create("call", RoomConfig(mode="call"))
    a1 = bench.join("call", "a1", "alice")
    bench.join("call", "a2", "bob")
    bench.join("call", "a3", "carol")
    program = rooms.rooms["call"]
    assert program.director.mode == "passthrough" and program.director.worker is None
    assert [p.subject for p in participants(rooms, "call").participants] == [
        "alice",
        "bob",
        "carol",
    ]
    bench.leave(a1, "deleted")  # the next one is passed through
    assert [f.id for f in program.feeds()] == ["a2"]
    assert program.director.mode == "passthrough"
    await rooms.shutdown()


def test_an_anchor_of_a_room_may_watch_it_and_no_other() -> None:
    tokens = TokenAuthority("s" * 48)
    access = AccessPolicy(tokens)
    anchor = f"Bearer {tokens.mint('r', 'anchor', 'alice', 60)}"
    assert access.authorize("r", "audience", anchor).subject == "alice"
    with pytest.raises(Forbidden):
        access.authorize("other", "audience", anchor)
    viewer = f"Bearer {tokens.mint('r', 'audience', 'bob', 60)}"
    with pytest.raises(Forbidden):
        access.authorize("r", "anchor", viewer)  # and never the other way round


async def test_every_stage_change_reaches_the_rooms_sockets_once_per_burst() -> None:
    channels = RoomChannels(MemoryBus())
    await channels.start()
    sinks: list[ParticipantNotices] = []
    rooms = RoomService(Settings(), StageTable(), lambda kind, data: [s(kind, data) for s in sinks])
    bench = room_bench()
    bench.rooms = rooms
    notices = ParticipantNotices(rooms, channels)
    sinks.append(notices)  # the room's events go to the notices, as in gateway.app
    member = channels.join("a", "watcher", "anchor", anonymous=False, sender_key="watcher")
    try:
        bench.join("a", "a1", "alice")
        bench.join("a", "a2", "bob")  # two changes in one turn of the loop: one list
        payload = json.loads(await asyncio.wait_for(member.queue.get(), 2))
        assert payload["type"] == "command" and payload["name"] == PARTICIPANTS_COMMAND
        listed = [p["anchor_id"] for p in payload["data"]["participants"]]
        assert listed == ["a1", "a2"]
        await asyncio.sleep(0.05)
        assert member.queue.empty()
        rooms.add_guest("a", guest("x1"))
        notices("link.started", {"room": "a"})
        payload = json.loads(await asyncio.wait_for(member.queue.get(), 2))
        assert [p["guest"] for p in payload["data"]["participants"]] == [False, False, True]
    finally:
        channels.leave(member)
        await channels.stop()
        await rooms.shutdown()
