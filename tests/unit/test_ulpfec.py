"""ULPFEC in RED (relay/media/ulpfec.py): the encoder checked by a decoder written here from
RFC 5109 (sections 7 and 8) and RFC 2198, on random traces; the protection table; the parity
in the viewer's history; the SDP answer (red + ulpfec answered where offered, only there)."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters

from relay.media.report_loss import ReportLoss
from relay.media.ulpfec import (
    MAX_BLOCK,
    OFF_LOSS,
    ON_LOSS,
    FecPlan,
    encode,
    fec_payload,
    protection,
    rtp_header_length,
    unwrap_red,
)
from relay.rtc.adapter import accept_red_ulpfec
from relay.rtc.direct_sender import send_profile
from relay.rtc.fec_sender import FecSender
from relay.rtc.rtp_rewrite import (
    RtpRewriter,
    SendProfile,
    build_templates,
    extension_offset,
    extensions_map,
)
from tests.support.offers import fixture

RED, ULPFEC, H264, RTX_RED = 118, 120, 102, 119
SSRC = 0x1234ABCD


# --- a receiver, from the RFCs ----------------------------------------------------------------
def red_block(packet: bytes) -> tuple[int, bytes]:
    """RFC 2198 with one primary block: (its payload type, the RTP packet without RED)."""
    head = rtp_header_length(packet)
    assert packet[1] & 0x7F == RED
    assert not packet[head] & 0x80, "a single primary block: F bit clear"
    pt = packet[head] & 0x7F
    if pt == ULPFEC:
        return pt, packet[head + 1 :]
    out = bytearray(packet[:head])
    out[1] = (out[1] & 0x80) | pt
    return pt, bytes(out) + packet[head + 1 :]


def recover(fec: bytes, received: dict[int, bytes], ssrc: int) -> tuple[int, bytes] | None:
    """RFC 5109 section 8: the one protected packet missing, rebuilt from the FEC packet and
    the others it protects (None when none or more than one is missing)."""
    long_mask = bool(fec[0] & 0x40)
    assert not fec[0] & 0x80, "E bit clear"
    base = struct.unpack_from("!H", fec, 2)[0]
    mask_bytes = 6 if long_mask else 2
    protection_length = struct.unpack_from("!H", fec, 10)[0]
    mask = int.from_bytes(fec[12 : 12 + mask_bytes], "big")
    parity = fec[12 + mask_bytes :]
    assert len(parity) == protection_length
    seqs = [
        (base + i) & 0xFFFF for i in range(8 * mask_bytes) if mask >> (8 * mask_bytes - 1 - i) & 1
    ]
    missing = [s for s in seqs if s not in received]
    if len(missing) != 1:
        return None
    b0, b1 = fec[0], fec[1]
    ts = struct.unpack_from("!I", fec, 4)[0]
    length = struct.unpack_from("!H", fec, 8)[0]
    body = bytearray(parity)
    for s in seqs:
        if s == missing[0]:
            continue
        p = received[s]
        b0 ^= p[0]
        b1 ^= p[1]
        ts ^= struct.unpack_from("!I", p, 4)[0]
        length ^= len(p) - 12
        for i, byte in enumerate(p[12:]):
            body[i] ^= byte
    header = struct.pack("!BBHII", 0x80 | (b0 & 0x3F), b1, missing[0], ts, ssrc)
    return missing[0], header + bytes(body[:length])


def receive(sent: list[bytes], lost: set[int]) -> dict[int, bytes]:
    """What the viewer ends with: media it got, plus what its FEC packets rebuilt (repeated
    until nothing more is rebuilt, as libwebrtc's decoder does)."""
    media: dict[int, bytes] = {}
    fecs: list[bytes] = []
    for i, packet in enumerate(sent):
        if i in lost:
            continue
        pt, inner = red_block(packet)
        if pt == ULPFEC:
            fecs.append(inner)
        else:
            media[struct.unpack_from("!H", inner, 2)[0]] = inner
    progress = True
    while progress:
        progress = False
        for fec in fecs:
            found = recover(fec, media, SSRC)
            if found is not None:
                media[found[0]] = found[1]
                progress = True
    return media


# --- a sender: the frames as a viewer is sent them -------------------------------------------
PROFILE = SendProfile(
    payload_type=H264,
    mid="0",
    extensions=(
        ("http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", 2),
        ("http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01", 4),
        ("urn:ietf:params:rtp-hdrext:sdes:mid", 9),
    ),
    rtx_payload_type=RTX_RED,
    red_payload_type=RED,
    ulpfec_payload_type=ULPFEC,
)


def frame_payloads(rng: random.Random, keyframe: bool) -> tuple[bytes, ...]:
    count = rng.randint(8, 60) if keyframe else rng.randint(1, 7)
    return tuple(rng.randbytes(rng.randint(20, 1180)) for _ in range(count))


def send_trace(
    rng: random.Random, plan: FecPlan, frames: int
) -> tuple[list[bytes], list[list[int]], dict[int, bytes]]:
    """Frames numbered by a viewer's rewriter and parity from ``plan``: the packets on the
    wire (in order), the parity groups (indexes into it) and each media packet by its
    sequence number as the viewer must get it back (RED taken off)."""
    rewriter = RtpRewriter(SSRC, PROFILE, rtx_ssrc=77, rng=rng)
    ext_map = extensions_map(PROFILE)
    wire: list[bytes] = []
    groups: list[list[int]] = []
    plain: dict[int, bytes] = {}
    twcc = rng.randrange(1 << 16)
    for n in range(frames):
        keyframe = n % 30 == 0
        templates = build_templates(frame_payloads(rng, keyframe), PROFILE, n * 1000, ext_map)
        packets = rewriter.packets_for(templates, n * 3000)
        numbered = []
        off = extension_offset(packets[0], 4)
        assert off is not None
        for p in packets:  # the transport-wide number each gets (the writer writes it)
            buf = bytearray(p)
            struct.pack_into("!H", buf, off, twcc)
            twcc = (twcc + 1) & 0xFFFF
            numbered.append(bytes(buf))
        start = len(wire)
        wire.extend(numbered)
        for p in numbered:
            plain[struct.unpack_from("!H", p, 2)[0]] = unwrap_red(p)
        parity = plan.on_frame(numbered, keyframe, templates[-1])
        if parity:
            rewriter.extend_last(tuple(parity))
            seq = rewriter.sequence - len(parity)
            for i, p in enumerate(parity):
                buf = bytearray(p)
                struct.pack_into("!HII", buf, 2, (seq + i) & 0xFFFF, n * 3000, SSRC)
                wire.append(bytes(buf))
            groups.append(list(range(start, len(wire))))
    return wire, groups, plain


def parity_groups(wire: list[bytes]) -> dict[int, list[int]]:
    """Each parity packet's index on the wire -> the wire indexes of the media it protects."""
    index = {struct.unpack_from("!H", p, 2)[0]: i for i, p in enumerate(wire)}
    out = {}
    for i, packet in enumerate(wire):
        pt, inner = red_block(packet)
        if pt != ULPFEC:
            continue
        bits = 48 if inner[0] & 0x40 else 16
        base = struct.unpack_from("!H", inner, 2)[0]
        mask = int.from_bytes(inner[12 : 12 + bits // 8], "big")
        out[i] = [index[(base + b) & 0xFFFF] for b in range(bits) if mask >> (bits - 1 - b) & 1]
    return out


@pytest.mark.parametrize("loss", [0.02, 0.05, 0.08, 0.15])
def test_any_single_loss_per_group_is_recovered(loss: float) -> None:
    """Random frames (keyframes of up to 60 packets: several blocks), any level: drop one
    media packet of each parity group at random (and sometimes the parity packet instead);
    the decoder from the RFCs rebuilds every lost media packet byte for byte, extensions
    (the transport-wide number) and padding included."""
    for seed in range(8):
        rng = random.Random(seed)
        plan = FecPlan(RED, ULPFEC)
        plan.set_loss(loss)
        wire, _, plain = send_trace(rng, plan, 90)
        groups = parity_groups(wire)
        assert groups, "parity was sent"
        lost: set[int] = set()
        expect: list[int] = []  # wire indexes the decoder must rebuild
        for fec_index, members in groups.items():
            if rng.random() < 0.1:
                lost.add(fec_index)  # the parity itself lost: nothing to repair in its group
            else:
                victim = rng.choice(members)
                lost.add(victim)
                expect.append(victim)
        got = receive(wire, lost)
        for i in expect:
            seq = struct.unpack_from("!H", wire[i], 2)[0]
            assert got.get(seq) == plain[seq], f"seed {seed}: packet {seq} not rebuilt"


def test_every_media_packet_is_covered_and_groups_are_interleaved() -> None:
    rng = random.Random(7)
    plan = FecPlan(RED, ULPFEC)
    plan.set_loss(0.05)
    wire, _, _plain = send_trace(rng, plan, 120)
    groups = parity_groups(wire)
    covered = [i for members in groups.values() for i in members]
    media = [i for i, p in enumerate(wire) if red_block(p)[0] != ULPFEC]
    assert sorted(covered) == media[: len(covered)], "each media packet in one group, in order"
    assert len(set(covered)) == len(covered)
    for members in groups.values():
        assert len(members) <= MAX_BLOCK
        # consecutive members of a group are at least as far apart as the level's groups
        assert all(b > a for a, b in itertools.pairwise(members))
    overhead = len(groups) / len(media)
    assert 0.1 < overhead < 0.35, overhead


def test_two_losses_in_one_group_are_not_made_up() -> None:
    """The decoder refuses a group missing two packets (nothing wrong is 'recovered')."""
    rng = random.Random(3)
    plan = FecPlan(RED, ULPFEC)
    plan.set_loss(0.02)
    wire, _, _plain = send_trace(rng, plan, 30)
    groups = parity_groups(wire)
    members = next(v for v in groups.values() if len(v) >= 2)
    lost = set(members[:2])
    got = receive(wire, lost)
    for i in lost:
        seq = struct.unpack_from("!H", wire[i], 2)[0]
        assert seq not in got


def test_protection_follows_the_loss_with_hysteresis() -> None:
    assert protection(0.0, on=False) is None
    assert protection(ON_LOSS / 2, on=False) is None
    assert protection(ON_LOSS / 2, on=True) is not None  # on until below OFF_LOSS
    assert protection(OFF_LOSS / 2, on=True) is None
    low, high = protection(0.02, on=False), protection(0.08, on=False)
    assert low is not None and high is not None
    assert high[0] < low[0], "more parity at more loss"
    assert low[1] < low[0] and high[1] < high[0], "keyframes get more"
    assert protection(0.5, on=True) is None, "a link the stream overruns gets none"


def test_off_on_a_clean_link_sends_nothing() -> None:
    rng = random.Random(1)
    plan = FecPlan(RED, ULPFEC)
    plan.set_loss(0.0)
    wire, _, _ = send_trace(rng, plan, 40)
    assert not parity_groups(wire)
    assert plan.packets == 0


def test_a_parity_packet_is_retransmitted_as_sent() -> None:
    """A NACK for a parity packet (H264 has no picture id: libwebrtc's receiver waits for
    every sequence number) gets it back in RED's RTX payload type with its original number."""
    rng = random.Random(5)
    plan = FecPlan(RED, ULPFEC)
    plan.set_loss(0.05)
    rewriter = RtpRewriter(SSRC, PROFILE, rtx_ssrc=77, rng=rng)
    templates = build_templates(frame_payloads(rng, True), PROFILE, 0, extensions_map(PROFILE))
    packets = rewriter.packets_for(templates, 9000)
    parity = plan.on_frame(packets, True, templates[-1])
    assert parity
    rewriter.extend_last(tuple(parity))
    seq = (rewriter.sequence - 1) & 0xFFFF  # the last parity packet
    rtx = rewriter.retransmission(seq)
    assert rtx is not None
    assert rtx[1] & 0x7F == RTX_RED
    head = rtp_header_length(rtx)
    assert struct.unpack_from("!H", rtx, head)[0] == seq
    assert rtx[head + 2] == ULPFEC, "the RED block of the parity, as sent"
    assert rtx[head + 3 :] == parity[-1][rtp_header_length(parity[-1]) + 1 :]


# --- the SDP answer ---------------------------------------------------------------------------
async def _answer(offer: str) -> tuple[bool, str, SendProfile]:
    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video", direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        video.setCodecPreferences(
            [c for c in _video_capabilities() if c.mimeType in ("video/H264", "video/rtx")]
        )
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        accepted = accept_red_ulpfec(pc)
        answer = await pc.createAnswer()
        codecs = video._codecs
        profile = send_profile(RTCRtpSendParameters(codecs=codecs, muxId="0"))
        return accepted, answer.sdp, profile
    finally:
        await pc.close()


def _video_capabilities() -> list[RTCRtpCodecParameters]:
    from aiortc import RTCRtpSender

    caps = RTCRtpSender.getCapabilities("video")
    return list(caps.codecs)


def _video_section(sdp: str) -> str:
    return sdp.split("m=video", 1)[1].split("m=audio", 1)[0]


async def test_chromium_offer_gets_red_and_ulpfec_answered() -> None:
    accepted, sdp, profile = await _answer(fixture("chromium_whep.sdp"))
    video = _video_section(sdp)
    assert accepted
    assert "a=rtpmap:118 red/90000" in video
    assert "a=rtpmap:120 ulpfec/90000" in video
    assert "a=rtpmap:119 rtx/90000" in video and "a=fmtp:119 apt=118" in video
    fmts = video.split("\r\n", 1)[0].split()[3:]
    assert fmts[0] != "118", "the media codec stays first"
    assert {"118", "119", "120"} <= set(fmts)
    assert "flexfec" not in video
    assert profile.red_payload_type == 118 and profile.ulpfec_payload_type == 120
    assert profile.rtx_payload_type == 119, "a RED packet is retransmitted in RED's RTX"
    assert profile.payload_type not in (118, 119, 120)


@pytest.mark.parametrize("name", ["aiortc_whep.sdp", "firefox_whep.sdp"])
async def test_offers_without_red_and_ulpfec_are_answered_as_before(name: str) -> None:
    offer = fixture(name)
    has_both = "ulpfec/90000" in offer and "red/90000" in offer
    accepted, sdp, profile = await _answer(offer)
    video = _video_section(sdp)
    assert accepted is has_both
    if not has_both:
        assert "red/" not in video and "ulpfec" not in video
        assert profile.red_payload_type is None


async def test_red_without_ulpfec_is_not_answered() -> None:
    offer = "".join(
        line
        for line in fixture("chromium_whep.sdp").splitlines(keepends=True)
        if "ulpfec" not in line
    ).replace(" 120 ", " ")
    accepted, sdp, profile = await _answer(offer)
    assert not accepted
    assert "red/90000" not in _video_section(sdp)
    assert profile.red_payload_type is None


def test_send_profile_without_fec_keeps_plain_media() -> None:
    codecs = [
        RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=H264),
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=103, parameters={"apt": H264}
        ),
        RTCRtpCodecParameters(mimeType="video/red", clockRate=90000, payloadType=RED),
        RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=RTX_RED, parameters={"apt": RED}
        ),
        RTCRtpCodecParameters(mimeType="video/ulpfec", clockRate=90000, payloadType=ULPFEC),
    ]
    on = send_profile(RTCRtpSendParameters(codecs=codecs))
    off = send_profile(RTCRtpSendParameters(codecs=codecs), fec=False)
    assert (on.red_payload_type, on.rtx_payload_type) == (RED, RTX_RED)
    assert (off.red_payload_type, off.rtx_payload_type) == (None, 103)
    assert on.template_key != off.template_key


def test_red_templates_carry_the_media_payload_type_block() -> None:
    payloads = (b"\x65abc", b"\x41def")
    ext_map = extensions_map(PROFILE)
    red = build_templates(payloads, PROFILE, 0, ext_map)
    plain_profile = SendProfile(H264, "0", PROFILE.extensions, 103)
    plain = build_templates(payloads, plain_profile, 0, extensions_map(plain_profile))
    for r, p in zip(red, plain, strict=True):
        assert r[1] & 0x7F == RED
        assert unwrap_red(r) == p
    assert red[-1][1] & 0x80 and not red[0][1] & 0x80


def test_encode_blocks_stay_within_one_mask() -> None:
    rng = random.Random(2)
    media = [struct.pack("!BBHII", 0x80, H264, i, 0, SSRC) + rng.randbytes(100) for i in range(100)]
    out = encode(media, 0, 4)
    assert len(out) == 4 * 3  # three blocks: 48, 48, 4
    bases = sorted({struct.unpack_from("!H", p, 2)[0] for p in out})
    assert bases == [0, 48, 96]


def test_the_c_parity_is_the_python_one() -> None:
    """``_srtp_writer.ulpfec_parity`` (what senders use when built) against ``fec_payload``
    on random packets, masks and lengths (padding, extensions, CSRCs in the protected part)."""
    from relay.rtc import fec_sender

    c_parity = fec_sender._c_parity
    if c_parity is None:
        pytest.skip("the C send loop is not built")
    rng = random.Random(11)
    for _ in range(300):
        count = rng.randint(1, MAX_BLOCK)
        bits = 16 if count <= 16 else 48
        media = [
            bytes((0x80 | rng.randrange(64), rng.randrange(256)))
            + rng.randbytes(rng.randint(10, 1300))
            for _ in range(count)
        ]
        mask = rng.getrandbits(count) << (bits - count) or 1 << (bits - 1)
        base = rng.randrange(1 << 16)
        assert c_parity(media, mask, bits, base) == fec_payload(media, mask, bits, base)
    with pytest.raises(ValueError):
        c_parity([b"\x80" * 20], 0, 16, 0)  # protects nothing
    with pytest.raises(ValueError):
        c_parity([b"\x80" * 5], 1 << 15, 16, 0)  # not an RTP packet


_LOST = [0.0]  # cumulative packets lost over the reports of the test below


def _reports(loss: ReportLoss, fraction: float, start: float, seconds: int) -> None:
    """Receiver reports every 0.25 s of a 150 packet/s stream losing ``fraction`` (the
    cumulative counters carry on from the last call)."""
    for i in range(1, 4 * seconds + 1):
        _LOST[0] += 150 / 4 * fraction
        loss.on_report(int(150 * (start + i / 4)), int(_LOST[0]), start + i / 4)


def test_the_sender_follows_the_viewers_reports() -> None:
    """No parity until the viewer's receiver reports show loss; parity while they do; none
    again once they are clean (the level is read every LOSS_EVERY)."""
    reports = ReportLoss()
    sender = FecSender(RED, ULPFEC, None, reports)
    rng = random.Random(4)
    templates = build_templates(frame_payloads(rng, False), PROFILE, 0, extensions_map(PROFILE))
    seq = 0

    def frames(start: float, count: int) -> int:
        nonlocal seq
        made = 0
        for i in range(count):
            made += len(sender.protect(templates, seq, 0, SSRC, 0, 0, False, start + i / 30))
            seq += len(templates)
        return made

    _LOST[0] = 0.0
    reports.on_report(0, 0, 0.0)
    _reports(reports, 0.0, 0.0, 3)
    assert frames(3.0, 60) == 0 and sender.overhead == 0.0
    _reports(reports, 0.05, 3.0, 3)
    assert reports.fraction > ON_LOSS
    assert frames(6.0, 60) > 0 and sender.overhead > 0.0
    _reports(reports, 0.0, 6.0, 3)
    assert frames(9.0, 60) == 0 and sender.overhead == 0.0


def test_a_parity_packet_longer_than_pylibsrtp_takes_is_protected() -> None:
    """Parity over 1300-byte payloads is ~1365 bytes: more than ``pylibsrtp.Session.protect``
    takes (1356); its retransmission raised inside aiortc's RTCP loop and ended the viewer's
    transport (bench.adaptation, loss5-rtt40). ``protect_rtp`` protects it; a receiver's
    session decrypts it to the same bytes; a short packet goes as pylibsrtp protects it."""
    from pylibsrtp import Policy, Session

    from relay.rtc.srtp_writer import PYLIBSRTP_LIMIT, protect_rtp

    key = bytes(range(30))
    rng = random.Random(9)
    plan = FecPlan(RED, ULPFEC)
    plan.set_loss(0.05)
    rewriter = RtpRewriter(SSRC, PROFILE, rtx_ssrc=77, rng=rng)
    payloads = tuple(rng.randbytes(1300) for _ in range(6))
    templates = build_templates(payloads, PROFILE, 0, extensions_map(PROFILE))
    parity = plan.on_frame(rewriter.packets_for(templates, 0), True, templates[-1])
    rewriter.extend_last(tuple(parity))
    packet = rewriter.retransmission((rewriter.sequence - 1) & 0xFFFF)
    assert packet is not None and len(packet) > PYLIBSRTP_LIMIT
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    with pytest.raises(ValueError):
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)).protect(packet)
    assert rx.unprotect(protect_rtp(tx, packet)) == packet
    short = bytearray(packet[:200])
    short[3] ^= 1  # another sequence number (libsrtp's replay check)
    short = bytes(short)
    assert rx.unprotect(protect_rtp(tx, short)) == short
