"""Per-viewer layer adaptation in the impaired-network test bed: a viewer behind a 500 kbit/s
link on the mixer's three-layer ladder ends up on the lowest layer and keeps getting pictures.
Needs root (network namespaces, TUN devices, tbf); skips with the reason otherwise."""

from __future__ import annotations

import time

import pytest

from bench.adaptation import frozen_after, ladder_room, watch
from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.profiles import profile

UNAVAILABLE = netns.why_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no test bed: {UNAVAILABLE}")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_viewer_behind_500_kbits_moves_to_the_lowest_layer_and_keeps_playing() -> None:
    seconds = 20.0
    with NetBed({"anchor": profile("clean"), "thin": profile("500kbps")}) as bed:
        room, inset = ladder_room(bed)
        try:
            time.sleep(1.0)
            (seen,), timeline = watch(room, {"thin": ""}, seconds)
            metrics = room.api("/metrics")
        finally:
            if inset.stdin is not None:
                inset.stdin.close()
            room.close()
    assert "error" not in seen, seen
    gw = seen["gateway"]
    assert gw["layer"] == "180p" and gw["layer_mode"] == "auto", gw
    assert gw["layer_switches_down"] >= 1
    (line,) = timeline.values()
    moved_at = next(t for t, layer in line if layer == "180p")
    # it stays there (no probing up into a link that cannot carry it within the run)
    assert all(layer == "180p" for t, layer in line if t >= moved_at)
    assert moved_at - seen["joined_at"] < 8.0  # generous: the machine is shared
    # and keeps getting pictures once there
    assert seen["frames"] > 60
    after = frozen_after(seen, moved_at + 2.0)
    assert after is not None and after < 0.5, after
    assert 'stagecast_viewer_layer_switches_total{direction="down"}' in metrics
