"""LL-HLS across streams without sockets: the packager switching between streams (ffmpeg runs
and the slate), the slate itself (real PyAV encode, decoded back), and HlsOutput filling a gap
with slate parts on real files in real time."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path

import av
import pytest

from gateway.bridge.fmp4 import iter_boxes, parse_fragment, parse_init, retime_fragment
from gateway.bridge.hls_output import HlsOutput
from gateway.bridge.llhls import DeleteFile, LlHlsPackager, WriteFile
from gateway.bridge.slate import aac_frames_for, encode_slate


# -- packager ------------------------------------------------------------------------------------
def test_packager_switches_streams_with_discontinuities_and_fresh_names() -> None:
    pk = LlHlsPackager("s", part_target=0.3, target_duration=1, window=3)
    assert pk.start_stream(b"A") == [WriteFile("s-init0.mp4", b"A")]
    run = pk.stream
    pk.add_part(b"a0", 0.3, True, 100.0)
    pk.add_part(b"a1", 0.3, False)
    assert pk.preload_hint == "s-p2.m4s"
    assert pk.end_stream(run) == []  # listed: kept; the open segment stays open
    assert pk.open_segment is not None and pk.preload_hint == "s-p2.m4s"
    assert pk.end_program_time == pytest.approx(100.6)

    assert pk.start_stream(b"S", slate=True) == [WriteFile("s-slate0.mp4", b"S")]
    slate = pk.stream
    assert slate == "s-slate0.mp4"
    assert pk.add_part(b"x", 0.3, False, stream=slate) == []  # cannot start a segment: dropped
    actions = pk.add_part(b"s0", 0.3, True, 100.6, stream=slate)
    assert WriteFile("s-0.m4s", b"a0a1") in actions  # the ended stream's segment closes now
    first = pk.segments[-1]
    assert first.discontinuity and first.init == slate
    assert first.parts[0].name == "s-p3.m4s"  # the hinted s-p2 went to no other stream
    pk.add_part(b"s1", 0.3, False, stream=slate)

    assert pk.start_stream(b"B") == [WriteFile("s-init1.mp4", b"B")]
    back = pk.stream
    assert back is not None
    pk.add_part(b"b0", 0.3, True, 200.0, stream=back)
    assert pk.end_stream(slate) == []  # still listed
    text = pk.playlist()
    assert text.count("#EXT-X-DISCONTINUITY\n") == 2
    assert '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="s-slate0.mp4"' in text
    assert '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="s-init1.mp4"' in text
    uris = re.findall(r'URI="(s-p\d+\.m4s)"', text)
    assert len(uris) == len(set(uris)) and "s-p2.m4s" not in uris and "s-p5.m4s" not in uris

    # the window moves on: inits go when nothing lists them, never while their stream runs
    deleted: list[str] = []
    for i in range(8):
        for a in pk.add_part(f"b{i}".encode(), 0.3, True, stream=back):
            if isinstance(a, DeleteFile):
                deleted.append(a.name)
    assert "s-init0.mp4" in deleted and "s-slate0.mp4" in deleted
    assert "s-init1.mp4" not in deleted and "s-init1.mp4" in pk.names()
    assert pk.discontinuity_sequence == 2
    assert "#EXT-X-DISCONTINUITY\n" not in pk.playlist()


def test_a_stream_that_resumes_after_the_slate_waits_for_an_independent_part() -> None:
    pk = LlHlsPackager("r", part_target=0.3, target_duration=1)
    pk.start_stream(b"A")
    run = pk.stream
    assert run is not None
    pk.add_part(b"a0", 0.3, True, 100.0, stream=run)
    pk.start_stream(b"S", slate=True)
    slate = pk.stream
    pk.add_part(b"s0", 0.3, True, 110.0, stream=slate)
    assert pk.add_part(b"a1", 0.3, False, stream=run) == []  # mid-GOP: no decoder could start
    # held by ffmpeg through the stall: older than the slate, which stood for that time
    assert pk.add_part(b"old", 0.3, True, 109.0, stream=run) == []
    assert pk.add_part(b"a2", 0.3, True, 112.0, stream=run)
    seg = pk.segments[-1]
    assert seg.init == run and seg.discontinuity  # the same init, listed again after the slate
    assert pk.playlist().count('#EXT-X-MAP:URI="r-init0.mp4"') == 2
    with pytest.raises(RuntimeError):
        pk.add_part(b"?", 0.3, True, stream="r-nothing.mp4")


# -- slate ---------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_slate_repeats_on_a_running_timeline_with_exact_durations() -> None:
    slate = encode_slate(640, 360, part_target=0.3)
    assert aac_frames_for(0.3) == 14 and slate.duration == pytest.approx(14 * 1024 / 48000)
    assert slate.duration <= 0.3
    tracks = parse_init(slate.init[next(iter_boxes(slate.init))[2] :])
    video = next(t for t in tracks.values() if t.handler == "vide")
    assert (video.width, video.height) == (640, 360)
    parts = [slate.part(n) for n in range(20)]
    infos = [parse_fragment(p[: next(iter_boxes(p))[2]], tracks) for p in parts]
    assert all(i.independent for i in infos)  # each repetition starts with a keyframe
    assert [round(i.start, 6) for i in infos] == [round(n * slate.duration, 6) for n in range(20)]

    data = slate.init + b"".join(parts)
    with av.open(io.BytesIO(data), format="mp4") as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and "Baseline" in str(v.codec_context.profile)
        assert (a.codec_context.name, a.rate, a.channels) == ("aac", 48000, 2)
        pts = {"video": [], "audio": []}  # type: dict[str, list[int]]
        keyframes = []
        for packet in c.demux():
            if packet.size:
                pts[packet.stream.type].append(int(packet.pts))
                if packet.stream.type == "video" and packet.is_keyframe:
                    keyframes.append(int(packet.pts))
    with av.open(io.BytesIO(data), format="mp4") as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == len(pts["video"]) == 20 * 7  # every picture decodes
    assert keyframes == [n * 14 * 1024 for n in range(20)]  # one per repetition, at its start
    for kind in ("video", "audio"):  # no gap, no overlap: each packet follows the last
        steps = {b - a for a, b in zip(pts[kind], pts[kind][1:], strict=False)}
        assert len(steps) == 1, (kind, steps)
    assert pts["video"][-1] + 2048 == pts["audio"][-1] + 1024 == 20 * 14 * 1024

    audio_only = encode_slate(0, 0, video=False, part_target=0.1)
    assert audio_only.duration == pytest.approx(4 * 1024 / 48000)
    with pytest.raises(ValueError):
        encode_slate(640, 360, video=False, audio=False)


def test_retime_fragment_moves_decode_time_and_sequence() -> None:
    slate = encode_slate(320, 180, part_target=0.2)
    moved = retime_fragment(slate.fragment, {t: 123_456_789_000 for t in slate.ticks}, 77)
    assert len(moved) == len(slate.fragment)
    tracks = parse_init(slate.init[next(iter_boxes(slate.init))[2] :])
    moof = moved[: next(iter_boxes(moved))[2]]
    assert parse_fragment(moof, tracks).start == pytest.approx(123_456_789_000 / 48000)
    assert b"mfhd" in moof and int.from_bytes(moof[moof.index(b"mfhd") + 8 :][:4], "big") == 77
    with pytest.raises(ValueError):
        retime_fragment(slate.init, {}, 1)


# -- HlsOutput: the gap filled in real time ------------------------------------------------------
@pytest.mark.timeout(30)
async def test_hls_output_fills_a_gap_with_slate_until_a_stream_is_back(tmp_path: Path) -> None:
    source = await asyncio.to_thread(encode_slate, 320, 180, part_target=0.3)
    init_moov = source.init[next(iter_boxes(source.init))[2] :]
    tracks = parse_init(init_moov)
    pk = LlHlsPackager("o", part_target=0.3, target_duration=1)
    out = HlsOutput(tmp_path / "room", pk)
    assert out.gap == pytest.approx(1.0)
    try:
        run = await out.start_stream(source.init, tracks)
        for n in range(4):
            assert await out.add_part(run, source.part(n), source.duration, n % 3 == 0, None)
        await out.end_stream(run)  # ffmpeg ended: nothing comes for a while
        ended_at = time.monotonic()
        assert out.playlist_text is not None and "slate" not in out.playlist_text

        await out.wait_for(lambda: out.slate_parts > 0, 3.0)
        started = time.monotonic() - ended_at
        assert out.gap <= started < out.gap + 0.5, started
        await asyncio.sleep(1.5)
        made = out.slate_parts
        assert abs(made - (1 + 1.5 / source.duration)) <= 2, made  # real time, not faster
        text = out.playlist_text or ""
        assert '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="o-slate0.mp4"' in text
        for name in re.findall(r'URI="([^"]+)"', text):
            if "PRELOAD" not in name:
                assert out.file(name) is not None or name == out.hint, name

        back = await out.start_stream(source.init, tracks)  # a new run
        assert await out.add_part(back, source.part(0), source.duration, True, None)
        stopped_at = out.slate_parts
        for n in range(1, 5):  # while the stream gives parts, no slate comes between them
            await asyncio.sleep(source.duration)
            assert await out.add_part(back, source.part(n), source.duration, False, None)
        assert out.slate_parts == stopped_at
        text = out.playlist_text or ""
        assert text.count("#EXT-X-DISCONTINUITY\n") == 2 and "o-init1.mp4" in text
        assert (tmp_path / "room" / "index.m3u8").read_text() == text
    finally:
        await out.remove()
    assert not (tmp_path / "room").exists()
