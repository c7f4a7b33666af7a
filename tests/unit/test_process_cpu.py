from __future__ import annotations

import time

import psutil

from relay.ops.process_cpu import ProcessCpu


def test_percent_of_one_core_since_the_previous_reading() -> None:
    cpu, wall = [0.0], [100.0]
    meter = ProcessCpu(cpu=lambda: cpu[0], clock=lambda: wall[0])
    assert meter.percent() == 0.0  # the first reading has nothing to compare with (psutil)
    cpu[0], wall[0] = 0.25, 101.0
    assert meter.percent() == 25.0
    cpu[0], wall[0] = 1.75, 102.0  # two threads busy: more than one core
    assert meter.percent() == 150.0
    assert meter.percent() == 0.0  # no time passed


def test_agrees_with_psutil() -> None:
    """The figure the heartbeat reported before (psutil's) over the same busy window."""
    ours, theirs = ProcessCpu(), psutil.Process()
    ours.percent()
    theirs.cpu_percent(None)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        sum(range(1000))
    a, b = ours.percent(), theirs.cpu_percent(None)
    assert a > 0 and abs(a - b) < 25, (a, b)
