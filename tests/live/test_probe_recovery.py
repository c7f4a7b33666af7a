"""A Chromium viewer (transport-cc) on the mixer's three-layer ladder behind a link that drops to
400 kbit/s for 10 s and recovers: moved down in the dip, and back up to a higher layer after it,
found by probing (relay/media/probe.py: without probes its estimate never exceeds the low
layer's rate). Needs root (network namespaces, TUN devices, tbf) and Chromium; skips otherwise."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.adaptation import CHROMIUM_LEG, ladder_room, watch
from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.profiles import profile

UNAVAILABLE = netns.why_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no test bed: {UNAVAILABLE}")
DIP_AFTER = 8.0  # s after the viewer joined (it plays 720p by then)
DIP = 10.0
RANK = {"720p": 0, "360p": 1, "180p": 2}


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(240)
def test_a_chromium_viewer_climbs_back_after_a_dip_to_400k() -> None:
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("chromium is not installed")
    marks: dict[str, float] = {}
    timers: list[threading.Timer] = []
    with NetBed({"anchor": profile("clean"), CHROMIUM_LEG: profile("clean")}) as bed:

        def rate(kbps: int | None, mark: str) -> None:
            marks[mark] = time.monotonic()
            bed.set_rate(CHROMIUM_LEG, kbps)

        def joined() -> None:
            timers.append(threading.Timer(DIP_AFTER, rate, (400, "dip")))
            timers.append(threading.Timer(DIP_AFTER + DIP, rate, (None, "back")))
            for t in timers:
                t.start()

        room, inset = ladder_room(bed)
        try:
            time.sleep(1.0)
            (seen,), timeline = watch(
                room,
                {CHROMIUM_LEG: ""},
                45.0,
                chromium=frozenset({CHROMIUM_LEG}),
                on_joined=joined,
            )
        finally:
            for t in timers:
                t.cancel()
            if inset.stdin is not None:
                inset.stdin.close()
            room.close()
    assert "error" not in seen, seen
    assert "dip" in marks and "back" in marks, "the viewer never joined"
    (line,) = timeline.values()
    dip, back = marks["dip"], marks["back"]
    down = [t for t, layer in line if dip <= t < back and layer is not None and RANK[layer] > 0]
    assert down, line  # moved down in the dip (issue 17's target: within 2 s; bounded loosely)
    assert down[0] - dip < 6.0, (down[0] - dip, line)
    low = max(RANK[layer] for t, layer in line if dip <= t <= back + 1.0 and layer is not None)
    ups = [t for t, layer in line if t > back and layer is not None and RANK[layer] < low]
    assert ups, line  # and back up after the recovery, found by a probe
    # issue 17's target is 10 s; the machine is shared (a loaded run stalls the mixer itself)
    assert ups[0] - back < 15.0, (ups[0] - back, line)
    assert seen["gateway"].get("probes", 0) >= 1 and seen["gateway"].get("probe_bytes", 0) > 0
