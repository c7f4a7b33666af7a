"""CDN bridge building blocks without sockets or processes: ffmpeg argv, feed timeline and drop
policy, fMP4 box parsing, LL-HLS packaging, restart backoff."""

from __future__ import annotations

import threading

import pytest

from gateway.bridge.argv import FfmpegPlan, build_argv
from gateway.bridge.backoff import Backoff, KeyframeCadence
from gateway.bridge.feed import FeedPacket, FrameFeed, Timeline
from gateway.bridge.fmp4 import BoxSplitter
from gateway.bridge.llhls import (
    DeleteFile,
    LlHlsPackager,
    WriteFile,
    format_program_time,
    target_duration_for,
)
from gateway.bridge.process import failure_reason, redact_text, redact_url
from gateway.bridge.service import check_rtmp_url, default_ffmpeg
from relay.errors import Unprocessable

FFMPEG = default_ffmpeg()


# -- argv ----------------------------------------------------------------------------------------
def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_rtmp_copies_h264_and_makes_aac() -> None:
    argv = build_argv(FfmpegPlan("/x/ffmpeg", "rtmp", "H264", "opus", url="rtmps://cdn/app/key"))
    assert argv[0] == "/x/ffmpeg" and argv[1] == "-hide_banner"
    assert argv.index("-loglevel") < argv.index("-i")  # global options before input and output
    assert value(argv, "-f") == "matroska" and value(argv, "-i") == "pipe:0"
    assert value(argv, "-c:v") == "copy" and value(argv, "-c:a") == "aac"
    assert value(argv, "-af") == "aresample=async=1"  # silences (DTX) keep A/V in sync
    assert value(argv, "-progress") == "pipe:1"
    assert argv[-1] == "rtmps://cdn/app/key"
    assert value(argv[argv.index("-i") :], "-f") == "flv"
    assert argv[argv.index("-map") : argv.index("-map") + 2] == ["-map", "0:v:0"]
    assert "libx264" not in argv
    assert "nobuffer" not in argv  # it drops the frames read while probing


def test_argv_hls_transcodes_vp8_with_fixed_gop() -> None:
    plan = FfmpegPlan(FFMPEG, "hls", "VP8", "opus", keyframe_interval=1.0, fragment_duration=0.26)
    argv = build_argv(plan)
    assert value(argv, "-c:v") == "libx264" and value(argv, "-tune") == "zerolatency"
    assert value(argv, "-force_key_frames") == "expr:gte(t,n_forced*1)"
    assert value(argv, "-frag_duration") == "260000"
    assert "frag_keyframe" in value(argv, "-movflags") and argv[-1] == "pipe:1"
    assert "-progress" not in argv


def test_argv_single_kind_and_errors() -> None:
    audio_only = build_argv(FfmpegPlan(FFMPEG, "rtmp", None, "opus", url="rtmp://h/a/k"))
    assert "0:v:0" not in audio_only and "0:a:0" in audio_only and "-c:v" not in audio_only
    video_only = build_argv(FfmpegPlan(FFMPEG, "hls", "H264", None))
    assert "0:a:0" not in video_only and "-c:a" not in video_only
    with pytest.raises(ValueError):
        build_argv(FfmpegPlan(FFMPEG, "hls", None, None))
    with pytest.raises(ValueError):
        build_argv(FfmpegPlan(FFMPEG, "rtmp", "H264", "opus"))


def test_rtmp_url_checks_and_redaction() -> None:
    assert check_rtmp_url("rtmp://a.example:1935/live/key") == "rtmp://a.example:1935/live/key"
    for bad in (None, "", "http://h/a/k", "rtmp:///a/k", "rtmp://h/a/k -f null", "srt://h:1"):
        with pytest.raises(Unprocessable):
            check_rtmp_url(bad)
    assert redact_url("rtmp://h:1935/live/sk_123") == "rtmp://h:1935/live/****"
    assert redact_url("rtmps://user:pw@h/app/sub/key?auth=x") == "rtmps://h/app/sub/****"
    assert redact_url("rtmp://h") == "rtmp://h"
    line = "Error opening output rtmp://h:1/live/sk_123: Connection refused"
    assert redact_text(line) == "Error opening output rtmp://h:1/live/****: Connection refused"


def test_failure_reason_from_stderr() -> None:
    lines = [
        "[tcp @ 0x55994af7fd00] Connection to tcp://127.0.0.1:1 failed: Connection refused",
        "[out#0/flv @ 0x55994af85500] Error opening output rtmp://127.0.0.1:1/live/k: "
        "Connection refused",
        "Error opening output file rtmp://127.0.0.1:1/live/k.",
        "Error opening output files: Connection refused",
    ]
    reason = failure_reason(lines, 145)
    assert reason.startswith("ffmpeg exit 145: ")
    assert reason.endswith("Error opening output files: Connection refused")
    assert "/live/k" not in reason and "0x5599" not in reason
    assert failure_reason([], -9) == "ffmpeg ended (killed)"


def test_backoff_doubles_caps_limits_and_resets() -> None:
    b = Backoff(0.5, 3.0, limit=5, stable_after=10)
    assert [b.failed(0.1) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.failed(0.1) is None  # sixth consecutive failure: give up
    b.reset()
    assert b.failed(0.1) == 0.5 and b.failed(0.1) == 1.0
    assert b.failed(60.0) == 0.5  # it ran fine for a while: start over
    forever = Backoff(1, 2, limit=0)
    assert all(forever.failed(0) is not None for _ in range(100))


def test_keyframe_cadence_asks_only_when_none_came() -> None:
    k = KeyframeCadence(1.0, start=100.0)
    assert not k.due(100.5)
    assert k.due(100.96)  # a little early: the answer takes a round trip
    assert not k.due(101.2)  # asked: not again for an interval even if nothing comes
    assert k.due(101.96)
    k.keyframe(102.5)  # someone else's keyframe (a viewer joined) resets the clock
    assert not k.due(103.0) and k.due(103.5)
    k.keyframe(90.0)  # late arrival stamps never move it back
    assert not k.due(104.0)


# -- feed ----------------------------------------------------------------------------------------
def test_timeline_aligns_kinds_by_arrival_and_never_goes_back() -> None:
    tl = Timeline(origin=100.0)
    assert tl.pts_ms("video", 9_000_000, 90000, 100.0) == 0
    assert tl.pts_ms("audio", 123_456, 48000, 100.25) == 250  # unrelated RTP base
    assert tl.pts_ms("video", 9_000_000 + 3000, 90000, 100.04) == 33
    assert tl.pts_ms("audio", 123_456 + 960, 48000, 100.3) == 270
    assert tl.pts_ms("video", 9_000_000 + 2000, 90000, 100.05) == 34  # reordered: clamped
    early = Timeline(origin=10.0)
    assert early.pts_ms("audio", 0, 48000, 9.0) == 0  # never negative


def pkt(kind: str, key: bool = False, pts: int = 0) -> FeedPacket:
    return FeedPacket(kind, "H264" if kind == "video" else "opus", pts, b"x", key)  # type: ignore[arg-type]


def test_feed_starts_on_keyframe_and_drops_to_next_keyframe_when_full() -> None:
    feed = FrameFeed(maxlen=4, has_video=True)
    assert feed.put(pkt("audio")) is True  # dropped quietly before video starts
    assert feed.put(pkt("video")) is False  # delta frame: ask for a keyframe
    assert len(feed) == 0 and feed.stats.dropped == 2
    assert feed.put(pkt("video", key=True))
    for _ in range(3):
        assert feed.put(pkt("audio"))
    assert feed.put(pkt("video")) is False  # full: everything queued goes, wait for a keyframe
    assert len(feed) == 0 and feed.waiting_keyframe and feed.stats.overflows == 1
    assert feed.put(pkt("video", key=True)) and len(feed) == 1
    got = feed.get(0)
    assert got is not None and got.keyframe
    assert feed.get(0.01) is None  # empty, open: timeout
    feed.put(pkt("audio"))
    feed.close()
    assert feed.put(pkt("audio"))  # ignored after close
    assert feed.get() is not None and feed.get() is None  # drained, then the end


def test_audio_only_feed_and_threads() -> None:
    feed = FrameFeed(maxlen=1000, has_video=False)
    got: list[FeedPacket] = []

    def consume() -> None:
        while (p := feed.get()) is not None:
            got.append(p)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(500):
        assert feed.put(pkt("audio", pts=i))
    feed.close()
    t.join(5)
    assert [p.pts_ms for p in got] == list(range(500))
    small = FrameFeed(maxlen=2, has_video=False)
    assert all(small.put(pkt("audio")) for _ in range(3))
    assert small.stats.overflows == 1


def test_box_splitter_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        BoxSplitter().feed(b"\x00\x00\x00\x02abcd")
    assert BoxSplitter().feed(b"\x00\x00\x00\x10moof") == []  # incomplete: wait for more


# -- LL-HLS packager ---------------------------------------------------------------------------
def test_packager_cuts_segments_at_keyframes_and_renders_playlist() -> None:
    pk = LlHlsPackager("p", part_target=0.3, target_duration=1, window=3)
    actions = pk.start_stream(b"INIT")
    assert actions == [WriteFile("p-init0.mp4", b"INIT")]
    pattern = [True, False, False, False, True, False, False, True, False]
    writes: list[str] = []
    for i, key in enumerate(pattern):
        for a in pk.add_part(f"<{i}>".encode(), 0.27, key, 1_700_000_000.0 + i * 0.27):
            assert isinstance(a, WriteFile)
            writes.append(a.name)
    # segment 0 = parts 0-3, segment 1 = parts 4-6, segment 2 (open) = parts 7-8
    assert [s.msn for s in pk.segments] == [0, 1, 2]
    assert [len(s.parts) for s in pk.segments] == [4, 3, 2]
    assert "p-0.m4s" in writes and "p-1.m4s" in writes and "p-2.m4s" not in writes
    assert pk.newest_part == (2, 1) and pk.preload_hint == "p-p9.m4s"
    assert pk.reached(2, 1) and not pk.reached(2, 2) and pk.reached(1, None)
    assert pk.reached(1, 9)  # beyond segment 1's last part = the next segment's first
    assert not pk.reached(2, None)
    text = pk.playlist()
    assert text.startswith("#EXTM3U\n")
    assert "#EXT-X-TARGETDURATION:1\n" in text and "#EXT-X-MEDIA-SEQUENCE:0\n" in text
    assert "CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.900,HOLD-BACK=3.000" in text
    assert "#EXT-X-PART-INF:PART-TARGET=0.300" in text
    assert text.count('#EXT-X-MAP:URI="p-init0.mp4"') == 1
    assert '#EXT-X-PART:DURATION=0.27000,URI="p-p7.m4s",INDEPENDENT=YES' in text
    assert '#EXT-X-PART:DURATION=0.27000,URI="p-p8.m4s"\n' in text
    assert "#EXTINF:1.08000,\np-0.m4s\n" in text and "p-2.m4s" not in text
    assert text.rstrip().endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p-p9.m4s"')
    assert "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z" in text


def test_packager_segment_bytes_forced_cut_window_and_discontinuity() -> None:
    pk = LlHlsPackager("q", part_target=0.3, target_duration=1, window=2, part_window=1)
    pk.start_stream(b"I0")
    pk.add_part(b"a", 0.3, True)
    pk.add_part(b"b", 0.3, False)
    pk.add_part(b"c", 0.3, False)
    pk.add_part(b"d", 0.3, False)
    cut = pk.add_part(b"e", 0.3, False)  # 1.5 s would round above the target: cut anyway
    assert WriteFile("q-0.m4s", b"abcd") in cut
    assert not pk.segments[-1].parts[0].independent
    # the anchor left: the open segment stays open (with its hint) until what follows
    assert pk.end_stream() == [] and pk.preload_hint == "q-p5.m4s"
    assert pk.start_stream(b"I1") == [WriteFile("q-init1.mp4", b"I1")]
    actions = pk.add_part(b"f", 0.3, True)
    assert WriteFile("q-1.m4s", b"e") in actions
    assert pk.segments[-1].discontinuity
    assert pk.segments[-1].parts[0].name == "q-p6.m4s"  # the hinted p5 is never used
    text = pk.playlist()
    assert '#EXT-X-MAP:URI="q-init0.mp4"' in text
    assert '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="q-init1.mp4"' in text
    assert text.count("#EXT-X-PART:") == 1  # parts only for the last segment here
    pk.add_part(b"g", 0.3, True)  # closes segment 2: three complete, window 2
    pk.add_part(b"h", 0.3, True)
    text = pk.playlist()
    assert "q-0.m4s" not in text and "q-1.m4s" not in text
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in text and "#EXT-X-DISCONTINUITY\n" not in text
    assert text.count("#EXT-X-MAP:") == 1 and "q-init1.mp4" in text
    assert isinstance(actions[0], WriteFile)
    assert "q-init0.mp4" not in pk.names()


def test_packager_deletes_expired_files() -> None:
    pk = LlHlsPackager("r", part_target=0.3, target_duration=1, window=1)
    pk.start_stream(b"I")
    deleted: list[str] = []
    for _ in range(4):
        for a in pk.add_part(b"x", 0.3, True) + pk.add_part(b"y", 0.3, False):
            if isinstance(a, DeleteFile):
                deleted.append(a.name)
    assert deleted == ["r-0.m4s", "r-p0.m4s", "r-p1.m4s", "r-1.m4s", "r-p2.m4s", "r-p3.m4s"]
    assert [s.msn for s in pk.segments] == [2, 3] and "r-init0.mp4" in pk.names()


def test_target_duration_and_program_time() -> None:
    assert [target_duration_for(x) for x in (0.5, 1.0, 1.5, 2.0, 2.01)] == [1, 1, 2, 2, 3]
    assert format_program_time(0.0) == "1970-01-01T00:00:00.000Z"
