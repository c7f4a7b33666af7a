"""The ffmpeg WHIP push the live test runs is a plain argv list (no shell string)."""

from __future__ import annotations

from tests.support.ffmpeg_whip import whip_push_argv


def test_whip_push_argv_is_a_plain_list() -> None:
    argv = whip_push_argv("ffmpeg", "http://127.0.0.1:1/whip/r", "TOKEN", 3)
    assert argv[0] == "ffmpeg" and argv[-1] == "http://127.0.0.1:1/whip/r"
    joined = " ".join(argv)
    for part in ("-f whip", "-authorization TOKEN", "-profile:v baseline", "-c:a libopus", "-re"):
        assert part in joined
