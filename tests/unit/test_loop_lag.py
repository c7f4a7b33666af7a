"""The event-loop lag window behind /v1/runtime and the overload guard."""

from __future__ import annotations

import time

from relay.ops.loop_lag import LoopLagMonitor, overload_check


def test_loop_lag_window() -> None:
    lag = LoopLagMonitor(window=3.0)
    lag.record(0.01, now=10.0)
    assert not lag.lagging(0.5, now=10.0)
    lag.record(0.8, now=11.0)
    assert lag.lagging(0.5, now=11.5) and lag.lagging(0.5, now=13.9)
    lag.record(0.01, now=14.5)
    assert not lag.lagging(0.5, now=14.5)  # the late tick has left the window
    assert lag.max_lag == 0.8
    busy = LoopLagMonitor(window=1.0)
    for i in range(10):
        busy.record(0.0, now=20 + i * 0.1, busy=0.95)
    assert abs(busy.busy(now=21.0) - 0.95) < 1e-9
    assert overload_check(busy, None, 0.9)() is False  # its samples are old by wall clock
    assert overload_check(busy, None, None)() is False
    busy.record(0.0, now=time.monotonic(), busy=0.95)
    assert overload_check(busy, None, 0.9)() and not overload_check(busy, None, 0.99)()
