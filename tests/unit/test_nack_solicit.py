"""Holes made so that a viewer that NACKs once asks again (sans I/O), checked against aiortc's own
receiver classes (its NackGenerator and JitterBuffer, as a WHEP viewer built on aiortc runs
them): the skipped number makes it send its whole missing list, and the filler that closes it
adds nothing to the frames it releases."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from relay.media.nack_solicit import ACTIVE_FOR, EVERY, LOSSY_EVERY, NackSolicitor
from relay.media.retransmit import FOLLOW_UP_LOSS
from relay.rtc.rtp_rewrite import RtpRewriter, SendProfile, header_length

PROFILE = SendProfile(102, None, ())


def test_holes_are_made_only_while_the_viewer_asks_for_repairs() -> None:
    s = NackSolicitor()
    assert not s.due(0.0, 0, False)  # it never asked for anything
    assert s.due(1.0, 3, False)  # it asked: a hole now
    assert not s.due(1.0 + EVERY / 2, 3, False)
    assert s.due(1.0 + EVERY, 3, False)
    assert s.due(1.0 + ACTIVE_FOR, 3, False)  # still within ACTIVE_FOR of its last ask
    assert not s.due(1.1 + ACTIVE_FOR + EVERY, 3, False)  # quiet for longer: no more
    assert s.due(20.0, 4, False)  # asked again
    assert not s.due(21.0, 5, True)  # a viewer that repeats its NACKs on its own: never
    s.made(7, b"filler-7")
    assert s.filler(7) == b"filler-7" and s.filler(8) is None
    assert s.split([5, 7, 9]) == ([5, 9], True) and s.solicited == 1
    assert s.split([5, 9]) == ([5, 9], False) and s.solicited == 1


def test_holes_come_every_frame_while_the_viewer_loses_much() -> None:
    """At ``FOLLOW_UP_LOSS`` or more a hole is made in every frame (``LOSSY_EVERY``), however
    unevenly the frames come; below it every ``EVERY``; the pace follows the loss both ways."""
    s = NackSolicitor(lossy_every=LOSSY_EVERY)
    frame = 1 / 30
    times = [1.0 + i * frame + (0.012 if i % 2 else 0.0) for i in range(30)]  # uneven frames
    lossy = [t for t in times if s.due(t, 3, False, FOLLOW_UP_LOSS)]
    assert len(lossy) == 30 and LOSSY_EVERY == 0.0
    s = NackSolicitor(lossy_every=LOSSY_EVERY)
    mild = [t for t in times if s.due(t, 3, False, FOLLOW_UP_LOSS / 2)]
    assert 7 <= len(mild) <= 10  # the first frame 0.1 s or more after the last hole
    assert s.due(times[-1] + frame, 3, False, 0.05)  # the loss rose: at once
    assert s.due(times[-1] + frame + 0.005, 3, False, 0.05)  # and in every frame
    assert not s.due(times[-1] + 3 * frame, 3, True, 0.05)  # a repeater: never


def packets(rewriter: RtpRewriter, frame: int, count: int = 3) -> list[bytes]:
    templates = tuple(bytes(12) + bytes((frame, i)) for i in range(count))
    templates = tuple(bytes((0x80, 102)) + t[2:] for t in templates)
    return rewriter.packets_for(templates, frame * 3000)


def parsed(raw: bytes) -> RtpPacket:
    packet = RtpPacket.parse(raw)
    packet._data = packet.payload  # type: ignore[attr-defined]  # what aiortc's depayload sets
    return packet


def test_aiortcs_receiver_sends_its_missing_list_again_and_the_filler_adds_nothing() -> None:
    rewriter = RtpRewriter(1234, PROFILE)
    nacks = NackGenerator()
    buffer = JitterBuffer(capacity=512, is_video=True)
    released: list[bytes] = []

    def receive(raw: bytes) -> list[int] | None:
        packet = parsed(raw)
        asked = sorted(nacks.missing) if nacks.add(packet) else None
        _, frame = buffer.add(packet)
        if frame is not None:
            released.append(frame.data)
        return asked

    first = packets(rewriter, 0)
    for raw in first:
        assert receive(raw) is None
    second = packets(rewriter, 1)
    lost = RtpPacket.parse(second[1]).sequence_number
    assert receive(second[0]) is None
    assert receive(second[2]) == [lost]  # its one NACK; say it was lost on the way
    third = packets(rewriter, 2)
    for raw in third:
        assert receive(raw) is None  # no new hole: it never asks again on its own
    # a hole made: the filler takes the next number, the frame after it, the filler last
    number, filler = rewriter.filler()
    fourth = packets(rewriter, 3)
    assert RtpPacket.parse(fourth[0]).sequence_number == (number + 1) & 0xFFFF
    empty = RtpPacket.parse(filler)
    assert empty.payload == b"" and empty.timestamp == RtpPacket.parse(third[0]).timestamp
    assert empty.padding_size == 1 and header_length(filler) == 12 and len(filler) == 13
    assert receive(fourth[0]) == [lost, number]  # its whole missing list again
    assert receive(filler) is None and nacks.missing == {lost}
    for raw in fourth[1:]:
        receive(raw)
    assert receive(second[1]) is None  # the retransmission this NACK got
    for frame in range(4, 8):  # aiortc releases one frame per packet that arrives
        for raw in packets(rewriter, frame):
            receive(raw)
    # every frame released whole and in order, the filler's frame no different
    assert released[:4] == [
        b"".join(RtpPacket.parse(p).payload for p in frame)
        for frame in (first, second, third, fourth)
    ]
