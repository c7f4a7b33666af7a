"""A headless Chromium viewer behind a leg of the impaired-network test bed (bench/netbed),
watching a room of a gateway the bed runs: what its page saw (getStats, freezes) and the
gateway's last view of its session (``GET /v1/rooms/{room}/viewers``). Needs root and Chromium
(the tests that use it skip without them)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.anchor_ramp import CHROMIUM
from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.profiles import profile
from bench.netbed.room import BedRoom

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = netns.why_unavailable()
MARKS = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no test bed: {UNAVAILABLE}"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM}"),
]
"""A test module's ``pytestmark`` for tests that run this viewer."""


def watch(
    room: BedRoom, bed: NetBed, leg: str, seconds: float, *args: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the Chromium viewer's page saw (``args``: more of ``bench.netbed.chromium``'s
    options), and the gateway's last view of its session."""
    viewer = bed.popen(
        bed.legs[leg].ns,
        [sys.executable, "-m", "bench.netbed.chromium", room.base_url, room.room,
         "--seconds", str(seconds), "--tail", str(seconds / 2), *args],
        env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    last: dict[str, Any] = {}  # the first session's (the page joins again when it is closed)
    deadline = time.monotonic() + seconds + 90
    while viewer.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
            for seen in room.viewer_counters().values():
                if not last or seen["id"] == last["id"]:
                    last = seen
        time.sleep(0.5)
    if viewer.poll() is None:
        viewer.kill()
    assert viewer.stdout is not None
    return dict(json.loads(viewer.stdout.read() or "{}")), last


def watch_through(
    leg_profile: str, seconds: float, gateway_env: dict[str, str], *args: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A room of a gateway run with ``gateway_env``, its Chromium viewer behind
    ``leg_profile`` for ``seconds`` (the anchor's leg clean)."""
    with NetBed({"anchor": profile("clean"), "viewer": profile(leg_profile)}) as bed:
        room = BedRoom(bed, gateway_env=gateway_env)
        try:
            room.start()
            played, viewer = watch(room, bed, "viewer", seconds, *args)
        finally:
            room.close()
    print(json.dumps({"played": played, "gateway": viewer}, indent=1))
    return played, viewer
