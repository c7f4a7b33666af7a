"""relay.media.nack_tracker: a missing packet is NACKed when its gap appears and again every
max(RTT, 20 ms) up to its tries, and given up once it can no longer be played."""

from __future__ import annotations

from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from relay.media.nack_tracker import NackPolicy, NackTracker


def feed(tracker: NackTracker, seqs: range | list[int], now: float) -> list[int]:
    out: list[int] = []
    for seq in seqs:
        out += tracker.packet(seq % 65536, now)
    return out


def test_a_lost_retransmission_is_asked_for_again() -> None:
    """aiortc's generator asks for a packet once, and again only when a later gap appears: on
    a link that loses little, a lost retransmission is never asked for again."""
    aiortc = NackGenerator()
    nacks: list[list[int]] = []
    for seq in [*range(1, 4), *range(5, 40)]:  # 4 lost, and its retransmission too
        if aiortc.add(RtpPacket(sequence_number=seq)):
            nacks.append(sorted(aiortc.missing))
    assert nacks == [[4]]  # once, at the gap

    tracker = NackTracker(NackPolicy(budget=1.0))
    assert feed(tracker, range(1, 4), 0.0) == []
    assert tracker.packet(5, 0.0) == [4]  # at the gap
    assert feed(tracker, range(6, 9), 0.03) == [] and tracker.due(0.03) == []
    assert tracker.next_deadline() == 0.05  # the initial RTT assumed: 50 ms
    assert tracker.due(0.05) == [4]  # again
    assert tracker.due(0.14) == []  # each further wait twice the one before
    assert tracker.due(0.151) == [4]
    assert tracker.packet(4, 0.17) == []  # the third request was answered
    assert tracker.pending == 0 and tracker.next_deadline() is None
    stats = tracker.stats
    assert (stats.missing, stats.nacked, stats.renacked) == (1, 3, 2)
    assert (stats.recovered, stats.recovered_after_renack, stats.expired) == (1, 1, 0)


def test_tries_are_bounded_then_the_packet_is_given_up() -> None:
    tracker = NackTracker(NackPolicy(max_tries=3, budget=10.0))
    feed(tracker, [10, 12], 0.0)
    asked = [t for t in (0.05, 0.1, 0.16, 0.2, 0.25, 0.3) if tracker.due(t)]
    assert asked == [0.05, 0.16]  # 3 tries in all, the first at the gap
    assert tracker.pending == 1 and tracker.due(0.35) == []
    assert tracker.due(0.37) == [] and tracker.pending == 0  # its last wait is over
    assert tracker.stats.expired == 1
    assert tracker.packet(11, 0.4) == [] and tracker.stats.recovered == 0  # too late: unknown


def test_nothing_is_asked_for_past_the_budget() -> None:
    tracker = NackTracker(NackPolicy(budget=0.1, max_tries=10))
    feed(tracker, [1, 3], 0.0)
    assert tracker.due(0.05) == [2]
    assert tracker.next_deadline() == 0.1
    assert tracker.due(0.1) == []  # its frame is skipped by now
    assert tracker.pending == 0 and tracker.stats.expired == 1


def test_the_interval_follows_the_rtt_measured_from_first_try_answers() -> None:
    tracker = NackTracker(NackPolicy(budget=1.0))
    assert tracker.interval == 0.05  # assumed
    feed(tracker, [1, 3], 0.0)
    tracker.packet(2, 0.008)  # answered after 8 ms
    assert tracker.rtt == 0.008
    assert tracker.interval == 0.02  # never below 20 ms
    for i in range(40):  # a slower path: 80 ms
        base = 10 + 2 * i
        t = 1.0 + i
        feed(tracker, [base, base + 2], t)
        tracker.packet(base + 1, t + 0.08)
    assert tracker.rtt is not None and 0.075 < tracker.rtt <= 0.08
    # an answer to a second request says nothing about the round trip
    feed(tracker, [91, 93], 50.0)
    assert tracker.due(50.08) == [92]
    tracker.packet(92, 50.085)
    assert tracker.rtt is not None and tracker.rtt > 0.075


def test_packets_the_assembler_passed_are_given_up() -> None:
    tracker = NackTracker(NackPolicy(budget=1.0))
    feed(tracker, [1, 2, 5, 6, 9], 0.0)
    assert tracker.pending == 4  # 3 4 7 8
    tracker.played(7)  # skipped up to 7: 3 and 4 are of no use any more
    assert tracker.pending == 2 and tracker.stats.expired == 2
    assert tracker.due(0.05) == [7, 8]


def test_sequence_numbers_wrap() -> None:
    tracker = NackTracker(NackPolicy(budget=1.0))
    assert feed(tracker, [65533, 65534, 1, 2], 0.0) == [65535, 0]
    assert tracker.due(0.05) == [65535, 0]
    tracker.played(0)  # the assembler waits for 0: 65535 is gone
    assert tracker.due(0.16) == [0]
    assert tracker.packet(0, 0.17) == [] and tracker.stats.recovered == 1


def test_a_restart_or_a_wild_jump_asks_for_nothing() -> None:
    tracker = NackTracker(NackPolicy(budget=1.0))
    feed(tracker, range(100, 110), 0.0)
    assert tracker.packet(30000, 0.01) == []  # a new sequence: no 29,890 NACKs
    assert tracker.packet(30002, 0.02) == [30001]
    assert tracker.packet(5, 0.03) == []  # started over lower
    assert tracker.pending == 0


def test_missing_packets_are_bounded() -> None:
    tracker = NackTracker(NackPolicy(budget=1.0, max_missing=16, max_jump=3000))
    assert len(tracker.packet(0, 0.0) + tracker.packet(1000, 0.0)) == 999
    assert tracker.pending == 16 and tracker.stats.expired == 999 - 16
    assert tracker.due(0.05) == list(range(984, 1000))  # the newest are kept


def test_reordered_packets_are_recovered_without_a_second_request() -> None:
    tracker = NackTracker()
    assert feed(tracker, [1, 3, 2, 4], 0.0) == [2]
    assert tracker.pending == 0 and tracker.stats.recovered == 1
    assert tracker.due(1.0) == [] and tracker.stats.renacked == 0


async def test_an_anchor_ingest_asks_again_through_aiortcs_receive_path() -> None:
    """A video ingest with ``nacks``: aiortc's receive path NACKs a gap at once through the
    tracker (its own generator replaced), the loop timer asks again, the packet's arrival
    stops it; the frame assembler passing a gap gives its packets up."""
    import asyncio

    from aiortc import RTCPeerConnection
    from aiortc.rtcrtpparameters import RTCRtpReceiveParameters
    from aiortc.rtcrtpreceiver import RemoteStreamTrack
    from aiortc.rtp import HeaderExtensionsMap

    from relay.media.frames import CodecSpec
    from relay.media.hub import FanoutHub
    from relay.media.stream_key import StreamKey
    from relay.rtc.ingest import TrackIngest
    from relay.rtc.peer import close_quietly, rtc_configuration
    from tests.unit.test_simulcast import EXTENSIONS, VP8, vp8_payload, wire

    clock = [0.0]
    pc = RTCPeerConnection(rtc_configuration(()))
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    hub = FanoutHub(StreamKey("r"), {"video": CodecSpec("video", "VP8", 90000)})
    ingest = TrackIngest(
        "video",
        receiver,
        hub,
        clock=lambda: clock[0],
        max_wait=0.5,
        nacks=NackPolicy(budget=5.0, max_tries=3),  # the assembler's wait ends it first
    )
    assert ingest.nacks is not None
    sent: list[tuple[int, list[int]]] = []

    async def record(media_ssrc: int, lost: list[int]) -> None:  # the RTCP edge
        sent.append((media_ssrc, lost))

    receiver._send_rtcp_nack = record  # type: ignore[method-assign]
    params = RTCRtpReceiveParameters(codecs=[VP8], headerExtensions=EXTENSIONS, muxId="1")
    ext_map = HeaderExtensionsMap()
    ext_map.configure(params)
    receiver._track = RemoteStreamTrack(kind="video")
    await receiver.receive(params)

    async def packet(seq: int) -> None:
        payload = vp8_payload("f", seq == 1)
        await receiver._handle_rtp_packet(
            wire(ext_map, ssrc=4000, seq=seq, payload=payload), arrival_time_ms=seq * 33
        )

    try:
        for seq in (1, 2, 3, 5, 6):  # 4 lost
            await packet(seq)
        assert sent == [(4000, [4])]  # at the gap
        clock[0] = 0.06  # past the first interval (50 ms assumed)
        await asyncio.sleep(0.1)  # the timer was set for 50 ms
        assert sent == [(4000, [4]), (4000, [4])]
        await packet(4)  # the second request answered
        stats = ingest.nacks.stats
        assert (stats.recovered, stats.recovered_after_renack, stats.renacked) == (1, 1, 1)
        assert hub.stats.frames_in == 6
        # 8 lost and never resent: asked 3 times in all, then given up
        for seq in (7, 9):
            await packet(seq)
        for step in range(1, 9):  # repeats after 50 and 100 ms, given up 200 ms later
            clock[0] = 0.06 + 0.06 * step
            await asyncio.sleep(0.07)
        assert [lost for _, lost in sent[2:]] == [[8], [8], [8]]
        assert ingest.nacks.stats.expired == 1
        # a gap the assembler skipped (its wait is over) is not asked for any more
        clock[0] = 1.0
        await packet(11)  # 10 missing; the assembler gives up on 8 (and 9, its frame)
        assert sent[-1] == (4000, [10])
        clock[0] = 1.6
        await packet(12)  # and on 10: it is given up without its tries
        assert ingest.nacks.stats.expired == 2
        assert ingest.nacks.next_deadline() is None
    finally:
        ingest.nacks.close()
        await receiver.stop()
        await close_quietly(pc)
        await asyncio.sleep(0)
