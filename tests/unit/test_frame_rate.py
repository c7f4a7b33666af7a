"""The frame rate an RTMP push declares: measured from RTP timestamps, rounded to the common
rate it is, passed to ffmpeg as an output ``-r`` (tests/live/test_bridge_rtmp_meta.py checks
what nginx-rtmp sees)."""

from __future__ import annotations

from gateway.bridge.argv import FfmpegPlan, build_argv, frame_rate_of, nominal_frame_rate


def test_argv_declares_the_frame_rate_to_rtmp_only() -> None:
    rtmp = build_argv(
        FfmpegPlan("ffmpeg", "rtmp", "H264", "opus", url="rtmp://h/a/k", frame_rate=25)
    )
    out = rtmp[rtmp.index("pipe:0") + 1 :]  # an output option: it declares, timestamps pass
    assert out[out.index("-r") + 1] == "25" and out[out.index("-c:v") + 1] == "copy"
    hls = build_argv(FfmpegPlan("ffmpeg", "hls", "H264", "opus", frame_rate=25))
    assert "-r" not in hls
    audio_only = build_argv(
        FfmpegPlan("ffmpeg", "rtmp", None, "opus", url="rtmp://h/a/k", frame_rate=25)
    )
    assert "-r" not in audio_only


def test_frame_rate_of_rtp_timestamps() -> None:
    assert frame_rate_of([], 90000) is None and frame_rate_of([5], 90000) is None
    assert frame_rate_of([0, 3000, 6000, 9000], 90000) == 30.0
    wrap = (1 << 32) - 3600
    assert frame_rate_of([wrap, wrap + 3600 - (1 << 32), 3600], 90000) == 25.0


def test_nominal_frame_rate() -> None:
    assert nominal_frame_rate(None) == 30  # not measured (yet): the usual camera rate
    assert nominal_frame_rate(29.2) == 30 and nominal_frame_rate(24.4) == 24
    assert nominal_frame_rate(25.6) == 25 and nominal_frame_rate(59.0) == 60
    assert nominal_frame_rate(14.5) == 15 and nominal_frame_rate(41.0) == 41
    assert nominal_frame_rate(27.0) == 30  # frames lost under load
    assert nominal_frame_rate(0.2) == 1 and nominal_frame_rate(500) == 120
