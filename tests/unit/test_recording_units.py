"""Recording without sockets: ids and paths, the disk guard's decisions, the fragment index, the
VOD playlist text, and cutting a file back to its last whole box (a real fragmented MP4 written
by the bridge's feed writer, read back with PyAV)."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.bridge.feed import FeedPacket, FrameFeed, write_feed
from gateway.recording.files import (
    MB,
    BoxBoundary,
    DiskGuard,
    Fragment,
    Mp4Index,
    check_recording_id,
    container_for,
    index_mp4,
    mp4_options,
    new_recording_id,
    parse_part_name,
    part_name,
    recording_path,
    segments_of,
    vod_playlist,
)
from gateway.synthetic import encoded_clip
from relay.errors import NotFound


# -- ids and paths -------------------------------------------------------------------------------
def test_ids_are_made_here_and_nothing_else_names_a_file(tmp_path: Path) -> None:
    rid = new_recording_id(0.0)
    assert rid.startswith("19700101T000000Z-") and check_recording_id(rid) == rid
    assert new_recording_id() != new_recording_id()
    assert recording_path(tmp_path, rid, ".mp4") == tmp_path / f"{rid}.mp4"
    shouting = rid[:-1] + "A"  # (rid.upper() is rid itself when its 12 hex digits have no letter)
    for bad in ("..", "../x", "/etc/passwd", rid + "/..", shouting, "", " " + rid, "a" * 30):
        with pytest.raises(NotFound):
            check_recording_id(bad)
        with pytest.raises(NotFound):
            recording_path(tmp_path, bad, ".json")
    with pytest.raises(ValueError):
        recording_path(tmp_path, rid, "/../../x")


def test_container_follows_the_video_codec() -> None:
    assert container_for("H264") == ("mp4", ".mp4")
    assert container_for(None) == ("mp4", ".mp4")  # audio only
    assert container_for("VP8") == ("webm", ".webm")  # MP4 cannot carry VP8 in this FFmpeg
    assert mp4_options(1.0)["frag_duration"] == "1000000"


def test_part_names_round_trip_and_refuse_junk() -> None:
    assert parse_part_name(part_name(1201, 5000)) == (1201, 5000)
    for bad in ("0-0.m4s", "1-2.mp4", "-1-2.m4s", "1-2.m4s/..", "a-b.m4s", "1-99999999999.m4s"):
        assert parse_part_name(bad) is None, bad


# -- disk guard ----------------------------------------------------------------------------------
def test_disk_guard_refuses_below_min_and_stops_below_stop() -> None:
    guard = DiskGuard(min_free=512 * MB, stop_free=256 * MB)
    assert guard.may_start(512 * MB) and not guard.may_start(512 * MB - 1)
    assert guard.check(300 * MB) == "ok"  # running: goes on between the two thresholds
    assert guard.check(256 * MB - 1) == "stop"
    assert DiskGuard(0, 0).check(0) == "ok"


# -- playlist ------------------------------------------------------------------------------------
def _index(*frags: tuple[float, bool]) -> Mp4Index:
    out, pos, start = [], 1000, 0.0
    for duration, independent in frags:
        out.append(Fragment(pos, 100, duration, start, independent))
        pos += 100
        start += duration
    return Mp4Index(1000, tuple(out), ())


def test_segments_start_on_independent_fragments_near_the_target() -> None:
    idx = _index((1, False), (1, True), (1, False), (1, True), (1, True), (1, True), (0.5, False))
    segs = segments_of(idx, target=2.0)
    # the leading fragment that cannot start alone is left out; a segment closes at the
    # first independent fragment once it has lasted the target
    assert [(s.offset, s.size, s.duration) for s in segs] == [
        (1100, 200, 2.0),  # independent + the next one, which cannot start a segment
        (1300, 200, 2.0),  # two independent ones: the second came before the target
        (1500, 200, 1.5),
    ]
    assert idx.duration == 6.5


def test_vod_playlist_text() -> None:
    text = vod_playlist(_index((2.0, True), (2.5, True), (1.25, False)), target=2.0)
    assert text == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:7\n"
        "#EXT-X-TARGETDURATION:4\n"
        "#EXT-X-PLAYLIST-TYPE:VOD\n"
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        '#EXT-X-MAP:URI="0-1000.m4s"\n'
        "#EXTINF:2.000,\n"
        "1000-100.m4s\n"
        "#EXTINF:3.750,\n"
        "1100-200.m4s\n"
        "#EXT-X-ENDLIST\n"
    )
    growing = vod_playlist(_index((2.0, True), (2.5, True)), target=2.0, ended=False)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT\n" in growing and "ENDLIST" not in growing
    assert growing.endswith("1100-100.m4s\n")
    empty = vod_playlist(_index())
    assert empty.endswith('#EXT-X-MAP:URI="0-1000.m4s"\n#EXT-X-ENDLIST\n')


# -- a real file -----------------------------------------------------------------------------------
def _opus_packets(n: int) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.time_base = Fraction(1, 48000)
    out: list[bytes] = []
    for i in range(n):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1920), np.int16), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def _write_fmp4(path: Path) -> None:
    """3 s of H264 (GOP 1 s) + Opus through the bridge's feed writer, as a recording does."""
    clip = encoded_clip(320, 240, frames=90, gop=30)
    opus = _opus_packets(150)
    feed = FrameFeed(1000, has_video=True)
    packets = [FeedPacket("video", "H264", i * 33, d, k) for i, (d, k) in enumerate(clip)]
    packets += [FeedPacket("audio", "opus", i * 20, d, False) for i, d in enumerate(opus)]
    for p in sorted(packets, key=lambda p: (p.pts_ms, p.kind != "video")):
        assert feed.put(p)
    feed.close()
    errors: list[BaseException | None] = []
    with path.open("wb") as f:
        t = threading.Thread(
            target=write_feed,
            args=(feed, f, {"video": "H264", "audio": "opus"}, errors.append),
            kwargs={"format": "mp4", "options": mp4_options(0.5)},
        )
        t.start()
        t.join(20)
    assert errors == [None]


def _index_file(path: Path) -> Mp4Index:
    data = path.read_bytes()
    return index_mp4(lambda o, n: data[o : o + n], len(data))


def _decoded(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_index_of_a_real_fragmented_mp4(tmp_path: Path) -> None:
    path = tmp_path / "r.mp4"
    _write_fmp4(path)
    idx = _index_file(path)
    assert {t.handler for t in idx.tracks} == {"vide", "soun"}
    assert 2.8 <= idx.duration <= 3.1
    assert idx.fragments[0].independent and len(idx.fragments) >= 3
    assert sum(f.independent for f in idx.fragments) == 3  # one per keyframe
    assert _decoded(path) == 90


@pytest.mark.parametrize("cut", [0.35, 0.6, 0.97])
def test_a_file_cut_anywhere_goes_back_to_its_last_whole_box_and_plays(
    tmp_path: Path, cut: float
) -> None:
    whole = tmp_path / "whole.mp4"
    _write_fmp4(whole)
    data = whole.read_bytes()
    written = data[: int(len(data) * cut)]  # what reached the disk before it filled
    boundary = BoxBoundary()
    for i in range(0, len(written), 777):  # in the muxer's write sizes, any
        boundary.feed(written[i : i + 777])
    assert boundary.written == len(written)
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(written[: boundary.safe])
    idx = _index_file(kept)
    assert idx.end == boundary.safe  # ends on a whole fragment (moof + mdat), not in one
    assert idx.fragments and _decoded(kept) > 0


def test_settings_refuse_a_stop_threshold_above_the_start_one() -> None:
    from pydantic import ValidationError

    from gateway.settings import RecordingSettings

    assert RecordingSettings(min_free_mb=10, stop_free_mb=10).stop_free_mb == 10
    with pytest.raises(ValidationError):
        RecordingSettings(min_free_mb=10, stop_free_mb=11)
