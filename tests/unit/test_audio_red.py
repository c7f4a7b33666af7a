"""Opus in RED (relay/media/audio_red.py, relay/rtc/red_sender.py): the packing checked
byte by byte against RFC 2198 §3's layout and parsed back, a receiver written here rebuilding
lost packets from the next one, and the SDP answer (red/48000/2 answered for Chromium, and
only where offered)."""

from __future__ import annotations

import random
import struct

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters

from relay.media.audio_red import MAX_OFFSET, RedBlock, RedEncoder, copies_for, pack, parse
from relay.media.frames import EncodedFrame
from relay.media.report_loss import ReportLoss
from relay.rtc.adapter import accept_audio_red
from relay.rtc.direct_sender import send_profile
from relay.rtc.red_sender import RedSender
from relay.rtc.rtp_rewrite import RtpRewriter, SendProfile, TemplateCache, header_length
from tests.support.offers import fixture

OPUS, RED = 111, 63


def test_pack_matches_rfc_2198_layout() -> None:
    """RFC 2198 §3: F=1 | PT | 14-bit offset | 10-bit length per redundant block, a one-byte
    F=0 | PT for the primary, then the data in the same order."""
    old, prev, now = b"A" * 70, b"B" * 80, b"C" * 90
    out = pack(OPUS, now, [RedBlock(OPUS, 1920, old), RedBlock(OPUS, 960, prev)])
    word0, word1 = struct.unpack_from("!II", out)
    assert word0 >> 31 == 1 and (word0 >> 24) & 0x7F == OPUS
    assert (word0 >> 10) & 0x3FFF == 1920 and word0 & 0x3FF == 70
    assert word1 >> 31 == 1 and (word1 >> 10) & 0x3FFF == 960 and word1 & 0x3FF == 80
    assert out[8] == OPUS, "the primary's header: F bit clear"
    assert out[9:] == old + prev + now
    assert parse(out) == [
        RedBlock(OPUS, 1920, old),
        RedBlock(OPUS, 960, prev),
        RedBlock(OPUS, 0, now),
    ]


def test_a_primary_alone_is_one_byte_of_header() -> None:
    assert pack(OPUS, b"xyz", []) == bytes((OPUS,)) + b"xyz"
    assert parse(bytes((OPUS,)) + b"xyz") == [RedBlock(OPUS, 0, b"xyz")]


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x80\x00", bytes((0x80 | OPUS, 0, 4, 10)) + bytes((OPUS,)) + b"short"],
)
def test_parse_refuses_payloads_its_headers_do_not_fit(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse(payload)


def test_blocks_a_header_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError):
        pack(OPUS, b"x", [RedBlock(OPUS, MAX_OFFSET + 1, b"y")])
    with pytest.raises(ValueError):
        pack(OPUS, b"x", [RedBlock(OPUS, 960, bytes(1024))])


def test_encoder_carries_the_last_payloads_oldest_first() -> None:
    enc = RedEncoder(OPUS, 2)
    first = enc.encode(b"p0", 1000)
    assert parse(first) == [RedBlock(OPUS, 0, b"p0")]
    enc.encode(b"p1", 1960)
    third = parse(enc.encode(b"p2", 2920))
    assert third == [
        RedBlock(OPUS, 1920, b"p0"),
        RedBlock(OPUS, 960, b"p1"),
        RedBlock(OPUS, 0, b"p2"),
    ]
    assert enc.copies == 1 + 2


def test_encoder_leaves_out_what_a_header_cannot_name() -> None:
    enc = RedEncoder(OPUS, 2)
    enc.encode(b"big" * 400, 0)  # 1,200 bytes: no 10-bit length for it
    enc.encode(b"p1", 960)
    assert parse(enc.encode(b"p2", 1920))[0] == RedBlock(OPUS, 960, b"p1")
    enc.encode(b"p3", 1920 + MAX_OFFSET + 1)  # after a long gap: too old to name
    assert len(parse(enc.encode(b"p4", 1920 + MAX_OFFSET + 961))) == 2
    enc.encode(b"p5", 0)  # a new timeline: nothing earlier rides along
    assert parse(enc.encode(b"p6", 960)) == [RedBlock(OPUS, 960, b"p5"), RedBlock(OPUS, 0, b"p6")]


@pytest.mark.parametrize("distance,loss", [(1, 0.05), (2, 0.05), (2, 0.2)])
def test_a_receiver_rebuilds_lost_packets_from_the_next(distance: float, loss: float) -> None:
    """Random loss over 3,000 packets: every packet with one of the next ``distance`` packets
    received is rebuilt exactly (timestamp and payload), as NetEq splits RED by timestamp."""
    rng = random.Random(17)
    enc = RedEncoder(OPUS, int(distance))
    sent = {960 * i: rng.randbytes(rng.randrange(60, 200)) for i in range(3000)}
    received = [(ts, enc.encode(p, ts)) for ts, p in sent.items() if True]
    kept = [(ts, red) for ts, red in received if rng.random() >= loss]
    heard: dict[int, bytes] = {}
    for ts, red in kept:
        for block in parse(red):
            heard.setdefault(ts - block.offset, block.data)
    assert all(heard[ts] == sent[ts] for ts in heard)
    got = {ts for ts, _ in kept}
    expected = {
        960 * i for i in range(3000) if any(960 * (i + k) in got for k in range(int(distance) + 1))
    }
    assert set(heard) == expected
    assert len(heard) > len(got)  # something was rebuilt


def _frame(payload: bytes, ts: int) -> EncodedFrame:
    return EncodedFrame("audio", "opus", ts, (payload,), payload, False, 0.0)


def test_sender_puts_the_viewers_earlier_payloads_in_the_shared_template() -> None:
    """The node's template is a RED packet with its primary block only; each viewer's packet
    keeps its header and gains the copies, numbered and kept in its history as sent."""
    codecs = [
        RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=OPUS),
        RTCRtpCodecParameters(
            mimeType="audio/red", clockRate=48000, channels=2, payloadType=RED,
            parameters={"111/111": None},
        ),
    ]  # fmt: skip
    profile = send_profile(RTCRtpSendParameters(codecs=codecs, muxId="1"), audio_red=True)
    assert (profile.payload_type, profile.red_payload_type) == (OPUS, RED)
    assert profile.ulpfec_payload_type is None and profile.rtx_payload_type is None
    plain = send_profile(RTCRtpSendParameters(codecs=codecs, muxId="1"))
    assert plain.red_payload_type is None, "RED only when asked for"
    cache = TemplateCache(lambda: 0)
    sender = RedSender(profile, 1)
    rewriter = RtpRewriter(0xABCD, profile)
    packets = []
    for i, payload in enumerate((b"one", b"two", b"three")):
        frame = _frame(payload, 960 * i)
        template = cache.packets(frame, profile).templates[0]
        wrapped = sender.wrap(cache.packets(frame, profile), frame)
        (packet,) = wrapped.templates
        head = header_length(template)
        assert packet[:head] == template[:head] and packet[1] & 0x7F == RED
        assert wrapped.sizes == (len(packet),) and sender.added == len(packet) - len(template)
        packets += rewriter.packets_for(wrapped.templates, frame.timestamp)
    last = packets[-1]
    assert parse(last[header_length(last) :]) == [
        RedBlock(OPUS, 960, b"two"),
        RedBlock(OPUS, 0, b"three"),
    ]
    seq = struct.unpack_from("!H", last, 2)[0]
    assert rewriter.retransmission(seq) == last, "the history holds the packet as sent"


async def _answer(offer: str) -> tuple[bool, str, list[RTCRtpCodecParameters]]:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="sendonly")
        audio = pc.addTransceiver("audio", direction="sendonly")
        audio.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name == "opus"]
        )
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        accepted = accept_audio_red(pc)
        answer = await pc.createAnswer()
        return accepted, answer.sdp, list(audio._codecs)
    finally:
        await pc.close()


async def test_chromium_offer_gets_audio_red_answered() -> None:
    accepted, sdp, codecs = await _answer(fixture("chromium_whep.sdp"))
    audio = sdp.split("m=audio", 1)[1]
    assert accepted
    assert audio.split("\r\n", 1)[0].split()[2:] == ["111", "63"], "Opus first, then RED"
    assert "a=rtpmap:63 red/48000/2" in audio and "a=fmtp:63 111/111" in audio
    profile = send_profile(RTCRtpSendParameters(codecs=codecs, muxId="1"), audio_red=True)
    assert (profile.payload_type, profile.red_payload_type) == (OPUS, RED)


@pytest.mark.parametrize("name", ["aiortc_whep.sdp", "firefox_whep.sdp"])
async def test_offers_without_audio_red_are_answered_as_before(name: str) -> None:
    offer = fixture(name)
    accepted, sdp, _ = await _answer(offer)
    assert accepted is ("red/48000" in offer)
    if "red/48000" not in offer:
        assert "red/" not in sdp.split("m=audio", 1)[1]


async def test_red_over_another_codec_is_not_answered() -> None:
    offer = fixture("chromium_whep.sdp").replace("a=fmtp:63 111/111", "a=fmtp:63 0/0")
    accepted, sdp, _ = await _answer(offer)
    assert not accepted and "red/48000" not in sdp


def test_copies_follow_the_loss_with_hysteresis() -> None:
    def copies(loss: float, on: bool) -> int:
        return copies_for(2, on=on, loss=loss, allowed_bps=None, copy_bps=80_000)

    assert copies(0.0, False) == 0 and copies(0.008, False) == 0
    assert copies(0.01, False) == 2 and copies(0.05, False) == 2
    assert copies(0.007, True) == 2, "once on, kept down to OFF_LOSS"
    assert copies(0.004, True) == 0


def test_a_full_link_gets_only_the_copies_its_estimate_leaves_room_for() -> None:
    def copies(allowed: float) -> int:
        return copies_for(2, on=False, loss=0.05, allowed_bps=allowed, copy_bps=80_000)

    assert copies(500_000) == 2 and copies(100_000) == 1 and copies(50_000) == 0


def test_on_loss_the_sender_adds_copies_only_once_the_viewer_loses() -> None:
    profile = SendProfile(OPUS, "1", (), red_payload_type=RED)
    reports = ReportLoss()
    sender = RedSender(profile, 2, on_loss=True, report_loss=reports)
    cache = TemplateCache(lambda: 0)

    def send(i: int, now: float) -> list[RedBlock]:
        frame = _frame(bytes((i,)) * 100, 960 * i)
        (packet,) = sender.wrap(cache.packets(frame, profile), frame, now).templates
        return parse(packet[header_length(packet) :])

    reports.on_report(100, 0, 0.0)
    assert all(len(send(i, i * 0.02)) == 1 for i in range(50)), "a clean link: no copies"
    reports.on_report(200, 6, 1.5)  # 6 % of a window lost
    blocks = [send(i, 1.0 + i * 0.02) for i in range(50, 80)]
    assert len(blocks[-1]) == 3 and sender.copies_now == 2
    assert blocks[-1][0] == RedBlock(OPUS, 1920, bytes((77,)) * 100)
    reports.on_report(400, 6, 3.0)  # nothing lost since
    assert len([send(i, 3.0 + i * 0.02) for i in range(80, 120)][-1]) == 1
