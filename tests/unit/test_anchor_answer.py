"""The WHIP answer's start bitrate (issue 17 part 4): where a browser anchor's bandwidth
estimate starts goes on the video codecs of answers to offers with transport-cc (Chromium,
Firefox) and nowhere else; ffmpeg's and aiortc's answers stay as aiortc wrote them; odd fmtp
lines in an offer never reach the answer or break the munging."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from gateway.whip_http import anchor_answer
from relay.errors import BadSdp, StagecastError
from relay.rtc.sdp import check_offer, with_start_bitrate
from tests.support.offers import fixture, sub

START = "x-google-start-bitrate"

# ffmpeg 9's WHIP muxer as captured (H264 + Opus, no rtcp-fb at all), addresses rewritten
FFMPEG_OFFER = (
    "v=0\r\no=FFmpeg 4489045141692799359 2 IN IP4 127.0.0.1\r\ns=FFmpegPublishSession\r\n"
    "t=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:a1b2c3d4\r\n"
    "a=ice-pwd:0123456789abcdef01234567\r\na=fingerprint:sha-256 "
    + ":".join(["AB"] * 32)
    + "\r\na=setup:passive\r\na=mid:0\r\na=sendonly\r\na=msid:FFmpeg audio\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:1000 cname:FFmpeg\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 106\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:a1b2c3d4\r\n"
    "a=ice-pwd:0123456789abcdef01234567\r\na=fingerprint:sha-256 "
    + ":".join(["AB"] * 32)
    + "\r\na=setup:passive\r\na=mid:1\r\na=sendonly\r\na=msid:FFmpeg video\r\n"
    "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:106 H264/90000\r\n"
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=ssrc:2000 cname:FFmpeg\r\n"
)


def aiortc_answer(offer: str) -> str:
    """What aiortc answers to ``offer`` as a receiver (createAnswer opens no socket)."""

    async def answer() -> str:
        pc = RTCPeerConnection()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            for transceiver in pc.getTransceivers():
                transceiver.direction = "recvonly"
            return (await pc.createAnswer()).sdp
        finally:
            await pc.close()

    return asyncio.run(asyncio.wait_for(answer(), 10))


def video_fmtp(answer: str) -> dict[str, dict[str, str]]:
    """Per video codec name and payload type of the answer: its format parameters."""
    desc = SessionDescription.parse(answer)
    out = {}
    for media in desc.media:
        if media.kind == "video":
            for codec in media.rtp.codecs:
                out[f"{codec.name}/{codec.payloadType}"] = {
                    k: str(v) for k, v in codec.parameters.items()
                }
    return out


def test_offers_with_transport_cc_are_the_browsers() -> None:
    assert check_offer(fixture("chromium_whip.sdp"), "publish").transport_cc
    assert check_offer(fixture("chromium_simulcast.sdp"), "publish").transport_cc
    assert check_offer(fixture("firefox_whip.sdp"), "publish").transport_cc
    assert not check_offer(fixture("aiortc_whip.sdp"), "publish").transport_cc
    assert not check_offer(FFMPEG_OFFER, "publish").transport_cc
    # transport-cc on audio only is not a video sender's estimator
    audio_only = re.sub(r"a=rtcp-fb:(\d+) transport-cc\r\n", "", fixture("chromium_whip.sdp"))
    audio_only = audio_only.replace(
        "a=rtpmap:111 opus/48000/2\r\n",
        "a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n",
    )
    assert not check_offer(audio_only, "publish").transport_cc


def test_a_chromium_answer_gets_the_start_bitrate_on_every_video_codec() -> None:
    offer = fixture("chromium_whip.sdp")
    summary = check_offer(offer, "publish")
    raw = aiortc_answer(offer)
    answer = anchor_answer(raw, summary, start_kbps=2500, opus_dtx=True)
    fmtp = video_fmtp(answer)
    media = [name for name in fmtp if not name.startswith("rtx/")]
    assert media and all(fmtp[name][START] == "2500" for name in media)
    assert all(START not in fmtp[name] for name in fmtp if name.startswith("rtx/"))
    # the codecs' own parameters are kept, the audio gets DTX and no start bitrate
    h264 = [fmtp[n] for n in media if n.startswith("H264/")]
    assert h264 and all(p["packetization-mode"] == "1" for p in h264)
    audio = answer.split("m=video")[0]
    assert START not in audio and "usedtx=1" in audio
    # 0: the browser's own start
    assert START not in anchor_answer(raw, summary, start_kbps=0)


@pytest.mark.parametrize("offer", ["aiortc_whip.sdp", "ffmpeg"])
def test_ffmpeg_and_aiortc_answers_stay_as_aiortc_wrote_them(offer: str) -> None:
    text = FFMPEG_OFFER if offer == "ffmpeg" else fixture(offer)
    summary = check_offer(text, "publish")
    raw = aiortc_answer(text)
    assert anchor_answer(raw, summary, start_kbps=2500) == raw
    assert START not in anchor_answer(raw, summary, start_kbps=2500, opus_dtx=True)


# fmtp lines a hostile or broken client may put in an offer: each either refused as bad SDP
# (400) or answered with exactly our start bitrate on each video codec
BAD_FMTP = {
    "start bitrate not a number": sub(
        r"^(a=fmtp:\d+ [^\r\n]*packetization-mode=1[^\r\n]*)", r"\1;x-google-start-bitrate=abc"
    ),
    "absurd start bitrate": sub(
        r"^(a=fmtp:\d+ [^\r\n]*packetization-mode=1[^\r\n]*)",
        r"\1;x-google-start-bitrate=99999999999;x-google-min-bitrate=-5",
    ),
    "fmtp without parameters": sub(r"^a=fmtp:(\d+) [^\r\n]*", r"a=fmtp:\1"),
    "empty parameters": sub(r"^a=fmtp:(\d+) [^\r\n]*", r"a=fmtp:\1 ;;;=;"),
    "fmtp of an unknown payload type": sub(r"^(a=rtpmap:96 [^\r\n]*)", r"\1\r\na=fmtp:77 a=b"),
    "fmtp payload type not a number": sub(r"^(a=rtpmap:96 [^\r\n]*)", r"\1\r\na=fmtp:x y=z"),
    "two fmtp lines for one codec": sub(
        r"^(a=fmtp:(\d+) [^\r\n]*packetization-mode=1[^\r\n]*)",
        r"\1\r\na=fmtp:\2 x-google-start-bitrate=1",
    ),
}


@pytest.mark.parametrize("edit", BAD_FMTP.values(), ids=BAD_FMTP.keys())
def test_bad_fmtp_in_an_offer_is_refused_or_answered_with_our_start_only(edit: object) -> None:
    assert callable(edit)
    offer = edit(fixture("chromium_whip.sdp"))
    assert offer != fixture("chromium_whip.sdp")
    try:
        summary = check_offer(offer, "publish")
    except BadSdp:
        return
    except StagecastError as exc:  # a 4xx of another kind is fine too, never a crash
        assert exc.status < 500
        return
    answer = anchor_answer(aiortc_answer(offer), summary, start_kbps=2500)
    for name, params in video_fmtp(answer).items():
        if not name.startswith("rtx/"):
            assert params[START] == "2500", (name, params)
    assert answer.count(f"{START}=") == answer.count(f"{START}=2500")
    assert "=abc" not in answer and "99999999999" not in answer


def test_an_answer_that_has_a_start_bitrate_gets_ours_instead() -> None:
    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=rtpmap:96 VP8/90000\r\n"
        "a=fmtp:96 x-google-start-bitrate=7\r\na=rtpmap:102 H264/90000\r\n"
        "a=fmtp:102 x-google-start-bitrate=abc;packetization-mode=1\r\n"
    )
    out = with_start_bitrate(answer, 1200)
    lines = out.split("\r\n")
    assert "a=fmtp:96 x-google-start-bitrate=1200" in lines
    assert "a=fmtp:102 packetization-mode=1;x-google-start-bitrate=1200" in lines
    assert with_start_bitrate(out, 1200) == out
