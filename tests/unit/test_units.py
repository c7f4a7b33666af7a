from __future__ import annotations

import time

import numpy as np
import pytest

from relay.auth.tokens import TokenAuthority, bearer_token
from relay.errors import BadSdp, Forbidden, Unauthorized, Unprocessable
from relay.media.keyframes import is_keyframe
from relay.media.stamps import draw_stamp, read_stamp, wall_ms
from relay.rtc.sdp import check_offer, parse_trickle, pick_codec

SECRET = "s" * 40


def test_keyframes() -> None:
    assert is_keyframe("H264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88")
    assert not is_keyframe("H264", b"\x00\x00\x00\x01\x41\x9a")
    assert is_keyframe("VP8", b"\x10\x02\x00")
    assert not is_keyframe("VP8", b"\x11\x02\x00")
    assert not is_keyframe("VP8", b"")


def test_stamp_roundtrip_and_scaled() -> None:
    luma = np.full((720, 1280), 90, np.uint8)
    now = wall_ms(time.time())
    draw_stamp(luma, 4242, now)
    stamp = read_stamp(luma)
    assert stamp is not None and stamp.counter == 4242 and stamp.sent_ms == now
    small = luma[::2, ::2].copy()
    assert read_stamp(small) == stamp
    assert read_stamp(np.full((720, 1280), 90, np.uint8)) is None


def test_tokens_scope_and_expiry() -> None:
    auth = TokenAuthority(SECRET)
    tok = auth.mint("room1", "anchor", "alice", 60)
    assert auth.verify(tok, room="room1", role="anchor").subject == "alice"
    with pytest.raises(Forbidden):
        auth.verify(tok, room="room2", role="anchor")
    with pytest.raises(Forbidden):
        auth.verify(tok, room="room1", role="audience")
    expired = auth.mint("room1", "anchor", "alice", 10, now=time.time() - 100)
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(expired, room="room1", role="anchor")
    with pytest.raises(Unauthorized):
        TokenAuthority("o" * 40).verify(tok, room="room1", role="anchor")
    with pytest.raises(ValueError):
        TokenAuthority("short")
    with pytest.raises(Forbidden):  # non-ASCII room names are compared as bytes, not a 500
        auth.verify(tok, room="r\u00f6\u00f6m", role="anchor")


def test_alg_none_token_refused() -> None:
    import jwt

    forged = jwt.encode(
        {"iss": "stagecast", "sub": "x", "room": "r", "role": "anchor", "exp": time.time() + 60},
        key=None,
        algorithm="none",
    )
    with pytest.raises(Unauthorized):
        TokenAuthority(SECRET).verify(forged, room="r", role="anchor")


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token(None, "q") == "q"
    assert bearer_token(None) is None
    with pytest.raises(Unauthorized):
        bearer_token("Basic abc")


OFFER = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=mid:0
a=sendonly
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF
a=setup:actpass
a=rtcp-mux
a=rtpmap:96 VP8/90000
"""


def test_check_offer_accepts_and_refuses() -> None:
    summary = check_offer(OFFER, "publish")
    assert summary.codecs == {"video": ("VP8",)}
    with pytest.raises(Unprocessable):
        check_offer(OFFER, "view")  # a viewer must receive
    with pytest.raises(Unprocessable):
        check_offer(OFFER.replace("VP8/90000", "AV1/90000"), "publish")
    with pytest.raises(BadSdp):
        check_offer(OFFER.replace("a=ice-ufrag:abcd\n", ""), "publish")
    with pytest.raises(BadSdp):
        check_offer("hello", "publish")
    with pytest.raises(BadSdp):
        check_offer("v=0\nm=video notaport\n", "publish")
    assert pick_codec(("VP8", "H264"), ("H264", "VP8")) == "H264"


def test_mdns_candidates_stripped() -> None:
    from relay.rtc.sdp import strip_mdns_candidates

    text = OFFER + (
        "a=candidate:1 1 udp 2122260223 0b7c3c9e-1f2d-4a1e-9c3b-7d2a1e5f6a7b.local 54321 typ host\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 54322 typ host\n"
    )
    out = strip_mdns_candidates(text)
    assert ".local" not in out and "127.0.0.1 54322" in out and out.startswith("v=0")


def test_opus_dtx_goes_on_opus_only() -> None:
    from relay.rtc.sdp import with_opus_dtx

    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    out = with_opus_dtx(answer)
    lines = out.split("\r\n")
    assert "a=fmtp:111 usedtx=1" in lines and not any(x.startswith("a=fmtp:0") for x in lines)
    assert not any(x.startswith("a=fmtp:96") for x in lines)
    assert with_opus_dtx(out) == out
    with_fec = answer.replace("opus/48000/2\r\n", "opus/48000/2\r\na=fmtp:111 minptime=10\r\n")
    assert "a=fmtp:111 minptime=10;usedtx=1" in with_opus_dtx(with_fec).split("\r\n")


def test_start_bitrate_goes_on_every_video_codec_of_the_answer() -> None:
    from aiortc.sdp import SessionDescription

    from relay.rtc.sdp import with_start_bitrate

    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 minptime=10\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\n"
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f\r\n"
    )
    out = with_start_bitrate(answer, 1200)
    lines = out.split("\r\n")
    assert "a=fmtp:96 x-google-start-bitrate=1200" in lines  # added after VP8's rtpmap
    assert (
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e01f;x-google-start-bitrate=1200"
        in (lines)
    )
    assert "a=fmtp:97 apt=96" in lines and "a=fmtp:111 minptime=10" in lines  # rtx, audio
    assert with_start_bitrate(out, 1200) == out and with_start_bitrate(answer, 0) == answer
    parsed = SessionDescription.parse(out)  # still a valid description, same codecs
    codecs = {c.payloadType: c for c in parsed.media[1].rtp.codecs}
    assert str(codecs[102].parameters["x-google-start-bitrate"]) == "1200"
    assert codecs[102].parameters["profile-level-id"] == "42e01f"


def test_trickle_fragment() -> None:
    frag = parse_trickle(
        "a=ice-ufrag:abcd\na=ice-pwd:xyz\nm=audio 9 RTP/AVP 0\na=mid:0\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\na=end-of-candidates\n"
    )
    assert frag.ufrag == "abcd" and frag.end_of_candidates
    assert frag.candidates == (("0", "1 1 udp 2130706431 127.0.0.1 5000 typ host"),)
    with pytest.raises(BadSdp):
        parse_trickle("a=candidate:1 2\n")
    with pytest.raises(BadSdp):
        parse_trickle("garbage")


def test_gc_pauses_counts_collections_by_generation() -> None:
    import gc

    from relay.ops.gc_pauses import GcPauses

    ticks = iter([1.0, 1.002, 2.0, 2.05])
    fake = GcPauses(clock=lambda: next(ticks))
    fake("start", {"generation": 0})
    fake("stop", {"generation": 0})
    fake("start", {"generation": 2})
    fake("stop", {"generation": 2})
    assert fake.collections == [1, 0, 1]
    assert fake.longest[2] == pytest.approx(0.05) and fake.seconds[0] == pytest.approx(0.002)
    real = GcPauses()
    real.install()
    real.install()  # once only
    try:
        gc.collect()
    finally:
        real.uninstall()
    assert real.collections[2] == 1 and real not in gc.callbacks
