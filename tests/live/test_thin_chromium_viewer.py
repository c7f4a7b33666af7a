"""Issue 17's screenshot target: a Chromium anchor publishing simulcast from the publish page, a
Chromium viewer on the watch page behind a 500 kbit/s link (tbf) in the test bed: the viewer
ends on the lowest layer and keeps decoding frames. With ``STAGECAST_SCREENSHOTS=docs`` its
page is saved as docs/watch-500kbps.png (else in the test's temporary directory).
Needs root (network namespaces, TUN devices, tbf) and Chromium; skips otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.anchor_ramp import CHROMIUM, busy_camera, publisher_argv
from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.profiles import profile
from bench.netbed.room import BedRoom
from tests.live.test_browser import shots

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = netns.why_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no test bed: {UNAVAILABLE}")
__all__ = ["shots"]  # the screenshot fixture (tests/live/test_browser.py)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(240)
def test_a_chromium_viewer_behind_500_kbits_plays_the_lowest_simulcast_layer(shots: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium is not installed at {CHROMIUM}")
    seconds, tail = 30.0, 8.0
    png = shots / "watch-500kbps.png"
    timeline: list[tuple[float, str | None]] = []
    with NetBed({"anchor": profile("clean"), "thin": profile("500kbps")}) as bed:
        room = BedRoom(bed)
        try:
            room.start_gateway()
            token = room.anchor_token()
            url = f"{room.base_url}/publish?room={room.room}&quality=720#token={token}"
            # a detailed clip: Chromium's own pattern is ~0.4 Mbit/s at 720p, which fits
            camera = busy_camera(Path(tempfile.gettempdir()) / "stagecast-anchor-ramp-720p.mjpeg")
            argv = [*publisher_argv(url, seconds + 120), "--camera-file", str(camera)]
            anchor = bed.popen(bed.legs["anchor"].ns, argv)
            room.wait_live(60)
            deadline = time.monotonic() + 30  # all three layers up (Chromium starts them in turn)
            while len(live_layers(room)) < 3 and time.monotonic() < deadline:
                time.sleep(0.5)
            layers = room.api(f"/v1/rooms/{room.room}/stream")["layers"]
            viewer = bed.popen(
                bed.legs["thin"].ns,
                [sys.executable, "-m", "bench.netbed.chromium", room.base_url, room.room,
                 "--seconds", str(seconds), "--tail", str(tail), "--screenshot", str(png)],
                env={"PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            t0 = time.monotonic()
            last: dict[str, Any] = {}
            while viewer.poll() is None and time.monotonic() - t0 < seconds + 60:
                with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
                    for seen in room.viewer_counters().values():
                        last = seen
                        timeline.append((time.monotonic() - t0, seen.get("layer")))
                time.sleep(0.5)
            assert viewer.stdout is not None
            played = json.loads(viewer.stdout.read() or "{}")
            anchor.terminate()
        finally:
            room.close()
    print(json.dumps({"layers": layers, "viewer": last, "played": played}, indent=1))
    assert [layer["name"] for layer in layers] and len(layers) == 3, layers
    lowest = layers[-1]
    assert lowest["height"] is not None and lowest["height"] <= 180, layers
    # the gateway moved it to the lowest layer and kept it there to the end
    assert last.get("layer") == lowest["name"], (last, timeline[-5:])
    on_lowest = [t for t, layer in timeline if layer == lowest["name"]]
    assert on_lowest and on_lowest[0] < seconds - tail, timeline
    assert all(layer == lowest["name"] for t, layer in timeline if t >= seconds - tail), timeline
    # the page shows that layer's picture, and kept decoding frames over the last stretch
    assert played.get("video") and played["video"][1] <= lowest["height"], played
    before, after = played["inbound_before_tail"], played["inbound"]
    decoded = after["framesDecoded"] - before["framesDecoded"]
    assert decoded >= 5 * tail, played  # >= 5 fps (the layer's own: ~15-30)
    frozen = after["totalFreezesDuration"] - before["totalFreezesDuration"]
    assert frozen < 0.25 * tail, played
    assert png.exists() and png.stat().st_size > 10_000


def live_layers(room: BedRoom) -> list[str]:
    with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):  # a loaded machine
        stream = room.api(f"/v1/rooms/{room.room}/stream")
        return [layer["name"] for layer in stream.get("layers", []) if layer["live"]]
    return []
