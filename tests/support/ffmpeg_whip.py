"""The argv of an ffmpeg WHIP push (a standard third-party WHIP client), built by ffmpeg-python."""

from __future__ import annotations

import ffmpeg

SIZE = (480, 270)


def whip_push_argv(exe: str, url: str, token: str, seconds: float) -> list[str]:
    """ffmpeg pushing a 30 fps test pattern (H264 constrained baseline) and a tone (Opus)."""
    video = ffmpeg.input(f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate=30", f="lavfi", re=None)
    audio = ffmpeg.input("sine=frequency=440:sample_rate=48000", f="lavfi", re=None)
    out = ffmpeg.output(
        video,
        audio,
        url,
        f="whip",
        t=seconds,
        authorization=token,
        handshake_timeout=5000,
        pix_fmt="yuv420p",
        **{
            "c:v": "libx264",
            "profile:v": "baseline",
            "preset": "ultrafast",
            "tune": "zerolatency",
            "g": 30,
            "bf": 0,
            "c:a": "libopus",
            "ar": 48000,
            "ac": 2,
            "b:a": "64k",
        },
    )
    compiled: list[str] = out.compile(cmd=exe)
    return [exe, "-hide_banner", "-nostats", "-nostdin", *compiled[1:]]
