"""The playout-delay extension, sans I/O: its 3 bytes, the policy that gives a lossy viewer a
minimum of one repair round (and nothing on a clean link), and the templates that carry it."""

from __future__ import annotations

import itertools

import pytest
from aiortc.rtp import RtpPacket

from relay.media.frames import EncodedFrame
from relay.media.playout_delay import (
    DEFAULT_MAX_MS,
    LOWER_AFTER,
    PLAYOUT_DELAY_URI,
    RAMP_MS,
    RELEASE,
    RELEASE_FOR,
    PlayoutDelayLimits,
    PlayoutDelayPolicy,
    decode,
    encode,
    repair_round,
)
from relay.rtc.rtp_rewrite import (
    SendProfile,
    TemplateCache,
    build_templates,
    extension_offset,
    extensions_map,
    header_length,
)

TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
PROFILE = SendProfile(
    102,
    "0",
    (
        ("http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", 2),
        (TWCC, 4),
        ("urn:ietf:params:rtp-hdrext:sdes:mid", 9),
        (PLAYOUT_DELAY_URI, 5),
    ),
)


def test_the_value_is_two_12_bit_counts_of_10_ms() -> None:
    assert encode(140, 10_000) == bytes((0x00, 0xE3, 0xE8))  # 14 and 1000 units
    assert decode(encode(140, 10_000)) == (140, 10_000)
    assert decode(encode(135, 400)) == (140, 400)  # rounded up to a unit
    assert decode(encode(10**6, 10**6)) == (40_950, 40_950)  # 12 bits at most
    assert decode(encode(300, 100)) == (300, 300)  # never a maximum below the minimum
    assert decode(encode(*RELEASE)) == (10, DEFAULT_MAX_MS)
    with pytest.raises(ValueError):
        decode(b"\x00\x01")


def feed(
    policy: PlayoutDelayPolicy, start: float, seconds: float, share: float, rtt: float | None
) -> float:
    """150 packets a second, ``share`` of them asked for again; returns the end time."""
    t = start
    asked = getattr(policy, "_asked_so_far", 0.0)
    sent = getattr(policy, "_sent_so_far", 0)
    while t < start + seconds:
        t += 0.1
        sent += 15
        asked += 15 * share
        policy.update(t, int(asked), sent, rtt)
    policy._asked_so_far = asked  # type: ignore[attr-defined]
    policy._sent_so_far = sent  # type: ignore[attr-defined]
    return t


def test_a_clean_viewer_gets_nothing_and_a_lossy_one_one_repair_round() -> None:
    policy = PlayoutDelayPolicy()
    t = feed(policy, 0.0, 20.0, 0.0, 0.045)
    assert policy.delay_ms is None and policy.value(t) is None  # nothing sent at all
    seen: list[int | None] = []
    for _ in range(6):  # 5 % asked for, 45 ms RTT: ramped up 40 ms per look
        t = feed(policy, t, 0.5, 0.05, 0.045)
        seen.append(policy.delay_ms)
    assert repair_round(0.045) == pytest.approx(0.045 + 1 / 30 + 0.03 + 0.02)
    assert policy.target_ms == 140  # 128 ms up to the next 20 ms step
    steps = [0, *(d or 0 for d in seen)]
    assert seen[-1] == 140 and all(b - a <= RAMP_MS for a, b in itertools.pairwise(steps))
    value = policy.value(t)
    assert value is not None and decode(value) == (140, DEFAULT_MAX_MS)
    # the round trip grows: the delay follows at once; shrinks: only after LOWER_AFTER
    t = feed(policy, t, 1.0, 0.05, 0.1)
    assert policy.delay_ms == 200  # 183 ms, at the max_ms ceiling
    t = feed(policy, t, LOWER_AFTER - 1, 0.05, 0.045)
    assert policy.delay_ms == 200
    t = feed(policy, t, 2.5, 0.05, 0.045)
    assert policy.delay_ms == 140
    # the loss ends: ramped down after off_after, RELEASE for RELEASE_FOR, then nothing
    t = feed(policy, t, 9.0, 0.0, 0.045)
    assert policy.delay_ms == 140
    end = t + 6.0  # the loss leaves the 2 s window, then 4 looks ramp it down
    while policy.delay_ms is not None and t < end:
        t = feed(policy, t, 0.1, 0.0, 0.045)
    assert policy.delay_ms is None
    released = policy.value(t)
    assert released is not None and decode(released) == RELEASE
    assert policy.value(t + RELEASE_FOR) is None


def test_a_link_the_stream_overruns_gets_no_delay() -> None:
    """Over ``RANDOM_LOSS`` asked for (a bottleneck): waiting longer for repairs helps nothing."""
    policy = PlayoutDelayPolicy()
    feed(policy, 0.0, 10.0, 0.3, 0.02)
    assert policy.delay_ms is None and policy.share == pytest.approx(0.3, abs=0.01)


def test_limits() -> None:
    assert PlayoutDelayPolicy(PlayoutDelayLimits(max_ms=80)).limits.max_ms == 80
    fixed = PlayoutDelayPolicy(PlayoutDelayLimits(fixed_ms=300, max_ms=400))
    value = fixed.value(0.0)  # from the first frame, whatever the link
    assert fixed.delay_ms == 300 and value is not None and decode(value)[0] == 300
    feed(fixed, 0.0, 30.0, 0.0, 0.01)
    assert fixed.delay_ms == 300
    low = PlayoutDelayPolicy(PlayoutDelayLimits(max_ms=60))
    feed(low, 0.0, 3.0, 0.05, 0.045)
    assert low.delay_ms == 60
    for bad in ({"max_ms": -1}, {"fixed_ms": 300, "max_ms": 200}, {"on_share": 0.0}):
        with pytest.raises(ValueError):
            PlayoutDelayLimits(**bad)  # type: ignore[arg-type]


def test_a_template_carries_the_extension_after_the_others() -> None:
    """Appended after aiortc's elements: the transport-wide sequence number keeps its offset
    (the direct sender finds it once), aiortc parses the packet, RTX rewrapping finds the
    payload."""
    ext_map = extensions_map(PROFILE)
    value = encode(140, DEFAULT_MAX_MS)
    plain = build_templates((b"abc", b"defg"), PROFILE, 123, ext_map)
    delayed = build_templates((b"abc", b"defg"), PROFILE, 123, ext_map, ((5, value),))
    assert extension_offset(plain[0], 5) is None
    offset = extension_offset(delayed[0], 5)
    assert offset is not None and delayed[0][offset : offset + 3] == value
    assert extension_offset(delayed[0], 4) == extension_offset(plain[0], 4)
    assert delayed[1][header_length(delayed[1]) :] == b"defg"
    packet = RtpPacket.parse(delayed[1], ext_map)
    assert packet.marker and packet.payload == b"defg" and packet.extensions.mid == "0"
    assert packet.extensions.abs_send_time == 123
    # a profile without extensions at all gets a block of its own
    bare = SendProfile(96, None, ())
    alone = build_templates((b"x",), bare, 0, extensions_map(bare), ((5, value),))
    assert extension_offset(alone[0], 5) is not None and alone[0][header_length(alone[0]) :] == b"x"


def test_viewers_given_the_same_delay_share_a_template() -> None:
    cache = TemplateCache(lambda: 1 << 40)
    value = encode(140, DEFAULT_MAX_MS)
    base = cache.template_id(PROFILE)
    a = cache.template_id(PROFILE, ((5, value),))
    b = cache.template_id(PROFILE, ((5, value),))
    c = cache.template_id(PROFILE, ((5, encode(100, DEFAULT_MAX_MS)),))
    assert a == b and len({base, a, c}) == 3
    frame = EncodedFrame("video", "H264", 0, (b"p1", b"p2"), b"p1p2", True, 0.0)
    first = cache.packets(frame, PROFILE, a)
    assert cache.packets(frame, PROFILE, b) is first and cache.builds == 1
    assert extension_offset(first.templates[0], 5) is not None
    assert extension_offset(cache.packets(frame, PROFILE, base).templates[0], 5) is None
