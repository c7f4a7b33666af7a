"""The event-loop lag window behind /v1/runtime and the overload guard."""

from __future__ import annotations

import asyncio
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


class Counted(LoopLagMonitor):
    samples = 0

    def record(self, lag: float, now: float, busy: float = 0.0, span: float = 1.0) -> None:
        self.samples += 1
        super().record(lag, now, busy, span)


async def test_an_idle_node_samples_slowly_until_a_join_is_judged() -> None:
    """While ``idle`` says so the sampler wakes every ``idle_interval``; a join judged by the
    overload guard (``quicken``) makes it sample every ``interval`` for the window, and a node
    that is not idle always does."""
    lag = Counted(interval=0.02, window=0.6, idle_interval=0.3)
    idle = True
    lag.idle = lambda: idle
    lag.start()
    try:
        await asyncio.sleep(0.05)  # the first sample's interval was taken at start
        n = lag.samples
        await asyncio.sleep(0.65)
        assert lag.samples - n <= 3, "idle: at most one sample each 0.3 s"
        overload_check(lag, 0.5, None)()  # a join asks: from the next sample on, fast
        await asyncio.sleep(0.35)  # the slow sample under way ends, then 0.02 s apart
        n = lag.samples
        await asyncio.sleep(0.2)
        assert lag.samples - n >= 4
        idle = False
        await asyncio.sleep(0.7)  # past the window: not idle, so still fast
        n = lag.samples
        await asyncio.sleep(0.2)
        assert lag.samples - n >= 4
    finally:
        await lag.stop()


async def test_a_join_ends_the_idle_sleep_so_a_stall_after_it_is_seen() -> None:
    """A join judged while the sampler is in its long idle sleep ends that sleep: a block of
    the loop right after the join is seen by the next join (in one 2 s sleep it ends before the
    wake-up is due and nothing is late: the 201 test_api's overloaded node gave)."""
    lag = Counted(interval=0.05, window=3.0, idle_interval=2.0)
    lag.idle = lambda: True
    lag.start()
    try:
        await asyncio.sleep(0.05)
        check = overload_check(lag, 0.2, None)
        assert not check()  # the first viewer: admitted, and the sampler quickened
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 (the loop falls behind)
        await asyncio.sleep(0.2)
        assert check(), "the block after the join went unseen"
        assert lag.samples >= 3
    finally:
        await lag.stop()


def test_busy_weighs_each_sample_by_its_length() -> None:
    """A quiet second, then a join's own work in the 1 ms sample its ``quicken`` ended: the
    share over the window is ~2 %, not the 51 % of a mean of the two samples (which the next
    join would then be refused on at ``max_loop_busy`` 0.5)."""
    lag = LoopLagMonitor(window=3.0)
    now = time.monotonic()
    lag.record(0.0, now - 0.001, busy=0.02, span=1.0)
    lag.record(0.0, now, busy=1.0, span=0.001)
    assert abs(lag.busy(now) - (0.02 + 0.001) / 1.001) < 1e-9
    assert not overload_check(lag, None, 0.5)()
