"""Session timers without sockets or sleeps: the sans-I/O state machines (connect timeout, media
timeout, viewer reaping, reconnect grace) driven by a number, the room's grace through
``RoomService.handle_timer(now)``, and the asyncio drivers against a clock that is already past
the deadline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from gateway.settings import Settings
from gateway.stage.anchor_hub import AnchorHub
from gateway.stage.room import RoomService
from gateway.stage.table import StageTable
from relay.media.lifecycle import (
    MEDIA_TIMEOUT,
    NEVER_CONNECTED,
    ReconnectGrace,
    SessionLifecycle,
)
from relay.media.stream_key import StreamKey
from relay.rtc.lifecycle import DeadlineTimer, PeerLifecycle
from relay.rtc.sdp import OfferSummary

pytestmark = pytest.mark.timeout(10)


# -- the state machines ---------------------------------------------------------------------
def test_connect_timeout_ends_a_session_that_never_connects() -> None:
    s = SessionLifecycle(created_at=100.0, connect_timeout=15.0, media_timeout=5.0)
    assert s.next_deadline() == 115.0
    assert s.handle_timer(114.9) is None and s.ended is None
    assert s.handle_timer(115.0) == NEVER_CONNECTED
    assert s.next_deadline() is None  # ended: nothing more to wait for


def test_viewer_reaping_only_before_it_connects() -> None:
    """A viewer (no media watch) that never connects is reaped at the connect timeout; one that
    connected in time is never ended by a timer."""
    never = SessionLifecycle(created_at=0.0, connect_timeout=15.0)
    assert never.handle_timer(15.0) == NEVER_CONNECTED

    viewer = SessionLifecycle(created_at=0.0, connect_timeout=15.0)
    assert viewer.connected(14.0) and not viewer.connected(14.5)  # the first time only
    assert viewer.next_deadline() is None
    assert viewer.handle_timer(10_000.0) is None and viewer.ended is None


def test_media_timeout_counts_from_the_last_media_or_the_connection() -> None:
    s = SessionLifecycle(created_at=0.0, connect_timeout=15.0, media_timeout=5.0)
    s.connected(1.0)
    assert s.next_deadline() == 6.0  # silent since it connected
    s.media_seen(4.0)
    s.media_seen(None)  # "none yet" never moves it back
    s.media_seen(3.0)
    assert s.next_deadline() == 9.0
    assert s.handle_timer(8.99) is None
    s.media_seen(8.0)  # media kept coming: the driver reads it before firing
    assert s.handle_timer(9.0) is None and s.next_deadline() == 13.0
    assert s.handle_timer(13.0) == MEDIA_TIMEOUT


def test_the_first_end_reason_sticks() -> None:
    s = SessionLifecycle(created_at=0.0, connect_timeout=1.0)
    assert s.end("connection failed")
    assert not s.end("deleted")
    assert s.handle_timer(100.0) == "connection failed"
    assert not s.connected(2.0)  # an ended session does not come back


def test_reconnect_grace_runs_out_unless_cancelled() -> None:
    g = ReconnectGrace(period=10.0)
    assert g.next_deadline() is None and g.handle_timer(1e9) is None
    g.start(50.0, "connection failed")
    assert g.running and g.next_deadline() == 60.0
    assert g.handle_timer(59.9) is None
    g.cancel()  # the anchor came back
    assert g.next_deadline() is None and g.handle_timer(60.0) is None
    g.start(70.0, "media timeout")
    assert g.handle_timer(80.0) == "media timeout; no reconnect within 10 s"
    assert not g.running and g.handle_timer(90.0) is None  # fires once


# -- the room's grace, driven by hand -------------------------------------------------------
@dataclass(eq=False)
class Anchor:
    """The anchor the room sees (its own hub is real); no peer connection."""

    id: str
    room: str
    subject: str
    hub: AnchorHub
    keyframe_requests: int = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RoomBench:
    rooms: RoomService
    clock: Clock
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def join(self, room: str, anchor_id: str, subject: str) -> Anchor:
        rooms = self.rooms
        stage = rooms.stage_for(room)
        rooms.reserve(stage, anchor_id)
        codecs = rooms.choose_codecs(stage, anchor_id, OfferSummary({"video": ("VP8",)}, "u", "p"))
        hub = AnchorHub(StreamKey(room, anchor=anchor_id), codecs)
        anchor = Anchor(anchor_id, room, subject, hub)
        rooms.joined(stage, anchor)
        return anchor

    def leave(self, anchor: Anchor, reason: str) -> None:
        anchor.hub.close()
        self.rooms.left(anchor, reason)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def room_bench(grace: float = 5.0) -> RoomBench:
    clock = Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    settings = Settings(sessions={"reconnect_grace": grace})
    rooms = RoomService(
        settings, StageTable(), lambda kind, data: events.append((kind, data)), clock=clock
    )
    return RoomBench(rooms, clock, events)


async def test_room_holds_the_program_for_the_grace_then_ends_it() -> None:
    bench = room_bench(grace=5.0)
    rooms = bench.rooms
    a = bench.join("r", "a1", "alice")
    hub = rooms.stages.live_hub("r")
    assert hub is not None and bench.kinds() == ["anchor.joined", "stream.started"]
    assert rooms.next_deadline() is None

    bench.leave(a, "connection failed")  # a network end: viewers keep a frozen picture
    assert rooms.next_deadline() == 1005.0
    rooms.handle_timer(1004.9)
    assert rooms.stages.live_hub("r") is hub and not hub.closed.is_set()

    rooms.handle_timer(1005.0)
    assert hub.closed.is_set() and rooms.stages.live_hub("r") is None
    assert "r" not in rooms.rooms and rooms.stages.get("r") is None  # an implicit room goes
    kind, data = bench.events[-1]
    assert kind == "stream.ended"
    assert data["reason"] == "connection failed; no reconnect within 5 s"
    assert rooms.next_deadline() is None
    await rooms.shutdown()


async def test_an_anchor_back_within_the_grace_resumes_the_same_program() -> None:
    bench = room_bench(grace=5.0)
    rooms = bench.rooms
    a = bench.join("r", "a1", "alice")
    hub = rooms.stages.live_hub("r")
    bench.leave(a, "media timeout")
    bench.clock.now += 3
    b = bench.join("r", "a2", "alice")
    assert rooms.next_deadline() is None  # the grace is over: cancelled
    assert rooms.stages.live_hub("r") is hub and rooms.directors["r"].mode == "passthrough"
    assert bench.events[-1] == (
        "anchor.joined",
        {"room": "r", "anchor_id": "a2", "subject": "alice", "resumed": True},
    )
    rooms.handle_timer(bench.clock.now + 60)
    assert rooms.stages.live_hub("r") is hub and rooms.anchor_hub("r", "a2") is b.hub
    await rooms.shutdown()


async def test_a_failed_return_after_the_grace_ran_out_ends_the_program() -> None:
    """The grace runs out while the returning anchor negotiates (its place reserved, so the
    timer leaves the program be), then that negotiation fails: nobody is left to end the
    program, so releasing the place does (its viewers hung on it for ever before)."""
    bench = room_bench(grace=5.0)
    rooms = bench.rooms
    a = bench.join("r", "a1", "alice")
    hub = rooms.stages.live_hub("r")
    assert hub is not None
    bench.leave(a, "connection failed")
    stage = rooms.stage_for("r")
    rooms.reserve(stage, "a2")  # alice publishes again; her offer is being answered
    rooms.handle_timer(1005.0)
    assert not hub.closed.is_set()  # someone is on the way
    rooms.release("r", "a2")  # ... and her negotiation failed
    assert hub.closed.is_set() and rooms.stages.live_hub("r") is None
    assert bench.events[-1][0] == "stream.ended"
    await rooms.shutdown()


async def test_a_failed_reservation_beside_a_live_anchor_leaves_the_program() -> None:
    bench = room_bench(grace=5.0)
    rooms = bench.rooms
    bench.join("r", "a1", "alice")
    hub = rooms.stages.live_hub("r")
    assert hub is not None
    rooms.reserve(rooms.stage_for("r"), "b1")
    rooms.release("r", "b1")  # bob's offer failed; alice is still on stage
    assert not hub.closed.is_set() and rooms.stages.live_hub("r") is hub
    await rooms.shutdown()


async def test_a_meant_end_ends_the_stream_at_once() -> None:
    for reason in ("deleted", "kicked"):
        bench = room_bench(grace=5.0)
        hub_anchor = bench.join("r", "a1", "alice")
        hub = bench.rooms.stages.live_hub("r")
        assert hub is not None
        bench.leave(hub_anchor, reason)
        assert hub.closed.is_set() and bench.rooms.next_deadline() is None
        assert bench.kinds()[-2:] == ["stream.ended", "anchor.left"]
        await bench.rooms.shutdown()


async def test_no_grace_when_it_is_off() -> None:
    bench = room_bench(grace=0.0)
    a = bench.join("r", "a1", "alice")
    bench.leave(a, "connection failed")
    assert bench.rooms.stages.live_hub("r") is None and bench.rooms.next_deadline() is None
    await bench.rooms.shutdown()


# -- the asyncio drivers, with a clock already past the deadline ----------------------------
async def test_peer_lifecycle_fires_the_connect_timeout_and_tears_down_once() -> None:
    pc = RTCPeerConnection()
    clock = Clock(now=15.0)  # the connect timeout is due at once
    life = PeerLifecycle(pc, SessionLifecycle(0.0, connect_timeout=15.0), clock=clock)
    torn: list[str | None] = []

    async def teardown() -> None:
        torn.append(life.ended)
        await pc.close()  # its "closed" state change must not tear down again

    life.start("t", teardown)
    assert life.task is not None
    await asyncio.wait_for(life.task, 5)
    assert torn == [NEVER_CONNECTED]
    await life.stop("deleted")  # already over: no second teardown
    assert torn == [NEVER_CONNECTED] and life.ended == NEVER_CONNECTED


async def test_peer_lifecycle_ends_when_the_connection_closes() -> None:
    pc = RTCPeerConnection()
    life = PeerLifecycle(pc, SessionLifecycle(0.0, connect_timeout=15.0), clock=Clock(0.0))
    torn: list[str | None] = []

    async def teardown() -> None:
        torn.append(life.ended)

    stop = asyncio.Event()
    life.start("t", teardown, ends=[(stop, "stream ended")])
    await pc.close()
    assert life.task is not None
    await asyncio.wait_for(life.task, 5)
    assert torn == ["connection closed"]


async def test_peer_lifecycle_ends_with_an_outside_event() -> None:
    pc = RTCPeerConnection()
    life = PeerLifecycle(pc, SessionLifecycle(0.0, connect_timeout=15.0), clock=Clock(0.0))
    torn: list[str | None] = []

    async def teardown() -> None:
        torn.append(life.ended)

    stream_over = asyncio.Event()
    life.start("t", teardown, ends=[(stream_over, "stream ended")])
    stream_over.set()
    assert life.task is not None
    await asyncio.wait_for(life.task, 5)
    assert torn == ["stream ended"]
    await pc.close()


async def test_deadline_timer_fires_at_the_machines_deadline() -> None:
    clock = Clock(now=100.0)
    grace = ReconnectGrace(period=10.0)
    fired: list[str | None] = []
    timer = DeadlineTimer(
        grace.next_deadline, lambda now: fired.append(grace.handle_timer(now)), clock=clock
    )
    grace.start(80.0, "connection failed")  # its deadline (90) is already past
    timer.rearm()
    await asyncio.sleep(0.01)
    assert fired == ["connection failed; no reconnect within 10 s"]
    timer.rearm()  # nothing running: nothing armed
    timer.cancel()
