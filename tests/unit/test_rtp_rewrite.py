"""RTP-level forwarding, sans I/O: templates, per-viewer numbering, NACK history and RTX."""

from __future__ import annotations

import random

from aiortc.rtp import RtpPacket

from relay.media.frames import EncodedFrame
from relay.rtc.rtp_rewrite import (
    GSO_PAD_BUDGET,
    HISTORY_FRAMES,
    RtpRewriter,
    SendProfile,
    TemplateCache,
    build_templates,
    extension_offset,
    extensions_map,
    gso_plan,
    gso_runs,
    header_length,
)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
AST = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
PROFILE = SendProfile(96, "1", ((MID, 1), (AST, 2)), rtx_payload_type=97)


def frame(ts: int, payloads: tuple[bytes, ...] = (b"a" * 10, b"b" * 20, b"c")) -> EncodedFrame:
    return EncodedFrame("video", "VP8", ts, payloads, b"", False, 0.0)


def parse(data: bytes) -> RtpPacket:
    return RtpPacket.parse(data, extensions_map(PROFILE))


def test_viewers_share_templates_and_get_their_own_numbering() -> None:
    cache = TemplateCache(lambda: 0x1234_5678_9ABC_DEF0)
    f = frame(3000)
    v1 = RtpRewriter(0x1111, PROFILE, rng=random.Random(1))
    v2 = RtpRewriter(0x2222, PROFILE, rng=random.Random(2))
    p1 = v1.packets_for(cache.templates(f, PROFILE), f.timestamp)
    p2 = v2.packets_for(cache.templates(f, PROFILE), f.timestamp)
    assert cache.builds == 1
    for rewriter, packets in ((v1, p1), (v2, p2)):
        parsed = [parse(p) for p in packets]
        assert [p.payload for p in parsed] == list(f.payloads)
        assert [p.marker for p in parsed] == [0, 0, 1]
        assert {p.ssrc for p in parsed} == {rewriter.ssrc}
        assert {p.payload_type for p in parsed} == {96}
        assert {p.timestamp for p in parsed} == {(rewriter.timestamp_origin + 3000) & 0xFFFFFFFF}
        seqs = [p.sequence_number for p in parsed]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(3)]
        assert parsed[0].extensions.mid == "1"
        assert parsed[0].extensions.abs_send_time == (0x1234_5678_9ABC_DEF0 >> 14) & 0xFFFFFF
    cache.templates(frame(6000), PROFILE)
    assert cache.builds == 2


def test_sequence_numbers_wrap_and_continue_across_frames() -> None:
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(1, PROFILE)
    r.sequence = 0xFFFE
    seqs = []
    for ts in (0, 3000):
        f = frame(ts)
        seqs += [parse(p).sequence_number for p in r.packets_for(cache.templates(f, PROFILE), ts)]
    assert seqs == [0xFFFE, 0xFFFF, 0, 1, 2, 3]
    assert r.packets == 6


def test_continue_timeline_keeps_timestamps_monotonic() -> None:
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(1, PROFILE)
    f = frame(90_000)
    r.packets_for(cache.templates(f, PROFILE), f.timestamp)
    last = r.last_timestamp
    r.continue_timeline(3000)
    g = frame(5)  # another hub's timeline, far behind
    packets = r.packets_for(cache.templates(g, PROFILE), g.timestamp)
    assert parse(packets[0]).timestamp == (last + 3000) & 0xFFFFFFFF
    h = frame(3005)
    packets = r.packets_for(cache.templates(h, PROFILE), h.timestamp)
    assert parse(packets[0]).timestamp == (last + 6000) & 0xFFFFFFFF


def test_a_layer_left_behind_is_never_resent() -> None:
    """After a move to another layer (``continue_timeline``) NACKs for the old layer's packets
    find nothing: the viewer starts over at the new layer's keyframe, and on a link the old
    layer overran its retransmissions would only delay that keyframe. The new layer's own
    packets are resent as before, also across a sequence number wrap."""
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(0xAAAA, PROFILE, rtx_ssrc=0xBBBB)
    r.sequence = 0xFFFC  # the new layer's packets wrap around 0
    f = frame(90_000)
    old = [parse(p).sequence_number for p in r.packets_for(cache.templates(f, PROFILE), 90_000)]
    assert r.lookup_packet(old[1]) is not None
    r.continue_timeline(3000)
    g = frame(5)
    new = [parse(p).sequence_number for p in r.packets_for(cache.templates(g, PROFILE), 5)]
    assert new[0] == 0xFFFF and new[1] == 0
    assert all(r.lookup_packet(s) is None and r.retransmission(s) is None for s in old)
    assert all(r.retransmission(s) is not None for s in new)
    # a probe's padding is taken from the new layer only: an old packet would be numbered
    # for transport-cc, then refused, and read as loss (review finding 8)
    assert [seq for seq, _ in r.recent(64)] == list(reversed(new))
    for i in range(HISTORY_FRAMES + 1):  # long after: the old layer is out of the history
        h = frame(3005 + i * 3000)
        r.packets_for(cache.templates(h, PROFILE), h.timestamp)
    later = (r.sequence - 1) & 0xFFFF
    assert r.retransmission(later) is not None


def test_retransmission_is_rtx_wrapped_with_original_sequence() -> None:
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(0xAAAA, PROFILE, rtx_ssrc=0xBBBB)
    f = frame(100)
    originals = [parse(p) for p in r.packets_for(cache.templates(f, PROFILE), f.timestamp)]
    lost = originals[1]
    rtx = r.retransmission(lost.sequence_number)
    assert rtx is not None
    parsed = parse(rtx)
    assert parsed.payload_type == 97 and parsed.ssrc == 0xBBBB
    assert parsed.timestamp == lost.timestamp and parsed.marker == lost.marker
    assert parsed.payload[:2] == lost.sequence_number.to_bytes(2, "big")
    assert parsed.payload[2:] == lost.payload
    assert parsed.extensions.mid == "1"
    again = parse(r.retransmission(lost.sequence_number) or b"")
    assert again.sequence_number == (parsed.sequence_number + 1) & 0xFFFF
    assert r.retransmission((lost.sequence_number + 100) & 0xFFFF) is None  # never sent
    for i in range(HISTORY_FRAMES):  # the frame ages out of the history
        g = frame(200 + i * 3000)
        r.packets_for(cache.templates(g, PROFILE), g.timestamp)
    assert r.retransmission(lost.sequence_number) is None


def test_lookup_gives_size_and_age_behind_the_newest_frame() -> None:
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(0xAAAA, PROFILE, rtx_ssrc=0xBBBB)
    f = frame(1000)
    first = [parse(p) for p in r.packets_for(cache.templates(f, PROFILE), f.timestamp)]
    assert r.lookup(first[1].sequence_number) == (len(cache.templates(f, PROFILE)[1]), 0)
    g = frame(1000 + 9000)  # 0.1 s later on the 90 kHz clock
    r.packets_for(cache.templates(g, PROFILE), g.timestamp)
    assert r.lookup(first[1].sequence_number) == (len(cache.templates(f, PROFILE)[1]), 9000)
    assert r.lookup((first[0].sequence_number - 5) & 0xFFFF) is None
    assert r.retransmissions == 0  # a lookup sends nothing
    h = frame(500)  # a source whose clock went back: no wrap-around into an age of hours
    r.packets_for(cache.templates(h, PROFILE), h.timestamp)
    assert r.lookup(first[1].sequence_number) == (len(cache.templates(f, PROFILE)[1]), 0)


def test_a_retransmissions_age_runs_from_its_send_not_from_media_time() -> None:
    """A mixer late on a busy machine skips ticks: its next frame's timestamp jumps 0.3 s
    ahead though it is sent 30 ms later. A packet of the frame before is 90 ms old when its
    NACK comes, not 0.3 s + (refused as too late for its playout: a freeze to the next
    keyframe for a viewer that would have had it in time)."""
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(0xAAAA, PROFILE, rtx_ssrc=0xBBBB)
    f = frame(90_000)
    first, _ = r.assign(cache.templates(f, PROFILE), f.timestamp, now=10.0)
    g = frame(90_000 + 27_000)  # 0.3 s of media time later
    r.assign(cache.templates(g, PROFILE), g.timestamp, now=10.03)
    lost = (first + 1) & 0xFFFF
    assert r.lookup(lost) == (len(cache.templates(f, PROFILE)[1]), 27_000)
    found = r.lookup_sent(lost, now=10.09)
    assert found is not None
    size, age, keyframe = found
    assert size == len(cache.templates(f, PROFILE)[1]) and not keyframe
    assert age is not None and abs(age - 0.09) < 1e-9
    untimed = RtpRewriter(1, PROFILE)
    seq, _ = untimed.assign(cache.templates(f, PROFILE), f.timestamp)
    assert untimed.lookup_sent(seq, now=1.0) == (len(cache.templates(f, PROFILE)[0]), None, False)


def test_the_last_keyframes_send_time_tells_which_packets_it_superseded() -> None:
    """``superseded`` with the age ``lookup_sent`` gives (as the direct sender asks): a delta
    frame before the keyframe is superseded, the keyframe's own packets and later frames are
    not, whatever the rounding of ``now - age``; an untimed packet never is."""
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(0xAAAA, PROFILE, rtx_ssrc=0xBBBB)
    assert r.keyframe_at == -1.0
    f = frame(90_000)
    before, _ = r.assign(cache.templates(f, PROFILE), f.timestamp, now=1000.1)
    key, _ = r.assign(cache.templates(f, PROFILE), f.timestamp + 3000, True, now=1000.133)
    after, _ = r.assign(cache.templates(f, PROFILE), f.timestamp + 6000, now=1000.166)
    assert r.keyframe_at == 1000.133
    now = 1000.4567
    superseded = {}
    for name, seq in (("before", before), ("key", key), ("after", after)):
        found = r.lookup_sent(seq, now)
        assert found is not None and found[1] is not None
        superseded[name] = r.superseded(found[1], now)
    assert superseded == {"before": True, "key": False, "after": False}
    assert not r.superseded(None, now)


def test_retransmission_without_rtx_repeats_the_packet() -> None:
    profile = SendProfile(96, None, ())
    cache = TemplateCache(lambda: 0)
    r = RtpRewriter(7, profile)
    f = frame(100)
    packets = r.packets_for(cache.templates(f, profile), f.timestamp)
    seq = parse(packets[2]).sequence_number
    assert r.retransmission(seq) == packets[2]


def test_header_length_counts_csrcs_and_extensions() -> None:
    p = RtpPacket(payload_type=96)
    p.csrc = [1, 2]
    p.payload = b"xyz"
    p.extensions.mid = "0"
    data = p.serialize(extensions_map(PROFILE))
    assert data[header_length(data) :] == b"xyz"


def test_gso_runs_follow_udp_segment_rules() -> None:
    # aiortc's FU-A split: the first packets one byte longer than the rest
    assert gso_runs((1001, 1001, 1000, 1000)) == ((0, 3), (3, 4))
    assert gso_runs((30, 1200, 1200, 1200, 500)) == ((0, 1), (1, 5))
    assert gso_runs((1200, 1200, 1300, 1300, 1300)) == ((0, 2), (2, 5))
    assert gso_runs((1200,) * 70) == ((0, 50), (50, 70))  # <= 60 kB per send
    assert gso_runs((100,)) == ((0, 1),) and gso_runs(()) == ()
    sizes = (5, 9, 9, 3, 9, 9, 9, 9, 1, 1)
    runs = gso_runs(sizes)
    assert [i for a, b in runs for i in range(a, b)] == list(range(len(sizes)))
    for a, b in runs:
        assert all(sizes[i] == sizes[a] for i in range(a, b - 1)) and sizes[b - 1] <= sizes[a]


def test_gso_plan_pads_odd_packets_up_within_budget() -> None:
    # x264 with sliced threads: three slices, each fragmented to its own packet size
    sizes = (962, 1033, 1032, 1123, 1122, 1122)
    runs, pads = gso_plan(sizes)
    assert len(runs) < len(gso_runs(sizes))
    assert [i for a, b in runs for i in range(a, b)] == list(range(len(sizes)))
    for a, b in runs:
        seg = sizes[a] + pads[a]
        assert all(sizes[i] + pads[i] == seg for i in range(a, b - 1))
        assert pads[b - 1] == 0 and sizes[b - 1] <= seg
        assert sum(pads[a:b]) <= GSO_PAD_BUDGET * sum(sizes[a:b])
    # a tiny packet beside big ones would need > 255 bytes of padding: its own send
    runs, pads = gso_plan((31, 1036, 1036, 981))
    assert runs[0] == (0, 1) and pads[0] == 0
    assert gso_plan((1000, 1001), pad_budget=0.0) == (((0, 1), (1, 2)), (0, 0))
    assert gso_plan((1000, 1001)) == (((0, 2),), (1, 0))


def test_padded_templates_carry_the_same_payload_and_retransmit() -> None:
    payloads = (b"a" * 900, b"b" * 960, b"c" * 959, b"d" * 300)
    cache = TemplateCache(lambda: 0)
    f = frame(3000, payloads)
    templates = cache.templates(f, PROFILE)
    assert len({len(t) for t in templates[:-1]}) == 1  # one GSO run of equal segments
    assert cache.packets(f, PROFILE).runs == ((0, 4),)
    v = RtpRewriter(0x1111, PROFILE, rtx_ssrc=0x2222, rng=random.Random(1))
    sent = [parse(p) for p in v.packets_for(templates, f.timestamp)]
    assert [p.payload for p in sent] == list(payloads)
    assert [p.marker for p in sent] == [0, 0, 0, 1]
    rtx = v.retransmission(sent[0].sequence_number)
    assert rtx is not None
    wrapped = parse(rtx)
    assert wrapped.payload[:2] == sent[0].sequence_number.to_bytes(2, "big")
    assert wrapped.payload[2:] == payloads[0]


def test_templates_are_what_aiortc_serialises_packet_by_packet() -> None:
    """The header serialised once per frame, each payload appended: the very bytes of one
    ``RtpPacket.serialize`` per packet (marker on the last), for every shape of profile."""
    rng = random.Random(5)
    profiles = [PROFILE, SendProfile(111, None, ()), SendProfile(102, "video", ((AST, 3),))]
    for profile in profiles:
        ext_map = extensions_map(profile)
        for count in (1, 2, 7):
            payloads = tuple(rng.randbytes(rng.randrange(1, 1200)) for _ in range(count))
            send_time = rng.randrange(1 << 24)
            expected = []
            for i, payload in enumerate(payloads):
                packet = RtpPacket(payload_type=profile.payload_type, marker=int(i == count - 1))
                packet.payload = payload
                packet.extensions.abs_send_time = send_time
                packet.extensions.mid = profile.mid
                expected.append(packet.serialize(ext_map))
            got = build_templates(payloads, profile, send_time, ext_map)
            assert got == tuple(expected), (profile, count)
    assert build_templates((), PROFILE, 0, extensions_map(PROFILE)) == ()


TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def test_transport_wide_sequence_numbers_have_a_place_in_every_template() -> None:
    """With transport-cc negotiated the templates carry the extension (value 0) at one offset,
    which is where the send loop writes each packet's number; RTX copies carry it too."""
    profile = SendProfile(96, "1", ((MID, 1), (AST, 2), (TWCC, 5)), rtx_payload_type=97)
    assert profile.transport_cc_id == 5 and PROFILE.transport_cc_id is None
    templates = TemplateCache(lambda: 0).templates(frame(3000), profile)
    offsets = {extension_offset(t, 5) for t in templates}
    assert len(offsets) == 1 and None not in offsets
    offset = offsets.pop()
    assert offset is not None
    ext_map = extensions_map(profile)
    packet = bytearray(templates[1])
    packet[offset : offset + 2] = (0xBEEF).to_bytes(2, "big")
    assert RtpPacket.parse(bytes(packet), ext_map).extensions.transport_sequence_number == 0xBEEF
    assert extension_offset(TemplateCache(lambda: 0).templates(frame(1), PROFILE)[0], 5) is None
    # an RTX copy gets its own transport-wide number at the same offset
    r = RtpRewriter(7, profile, rtx_ssrc=8, rng=random.Random(3))
    first, _ = r.assign(templates, 3000, keyframe=True)
    rtx = r.retransmission((first + 1) & 0xFFFF, 0x1234, offset)
    assert rtx is not None
    assert RtpPacket.parse(rtx, ext_map).extensions.transport_sequence_number == 0x1234
    assert r.lookup_packet((first + 1) & 0xFFFF) == (len(templates[1]), 0, True)


def test_extension_offset_reads_two_byte_headers_and_refuses_the_rest() -> None:
    two_byte = bytes([0x90, 96]) + bytes(10) + bytes([0x10, 0x00, 0, 2])
    two_byte += bytes([3, 1, 0xAA, 0, 9, 2, 0xBB, 0xCC])  # id 3 (1 byte), padding, id 9 (2)
    assert extension_offset(two_byte, 9) == 22 and extension_offset(two_byte, 3) == 18
    assert extension_offset(two_byte, 4) is None
    assert extension_offset(bytes([0x80, 96]) + bytes(10), 1) is None  # no extension block
    other = bytes([0x90, 96]) + bytes(10) + bytes([0x12, 0x34, 0, 1, 0x51, 0, 0, 0])
    assert extension_offset(other, 5) is None  # not RFC 8285
