"""Joins take turns (relay.rtc.join_queue), and a burst taken in turns waits instead of being
refused by the overload guard's busy share (only a late loop refuses then)."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.auth.access import Grant
from relay.errors import ServiceUnavailable
from relay.ops.loop_lag import LoopLagMonitor, overload_check
from relay.rtc.join_queue import RECENT, JoinQueue
from relay.rtc.viewers import ViewerService


async def test_at_most_concurrency_joins_at_once_in_arrival_order() -> None:
    queue = JoinQueue(concurrency=2, max_wait=60)
    inside, most, order = 0, 0, []

    async def join(i: int) -> None:
        nonlocal inside, most
        async with queue.turn():
            inside += 1
            most = max(most, inside)
            order.append(i)
            for _ in range(3):  # steps, each its own turn of the loop
                await asyncio.sleep(0)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(join(i) for i in range(20))), 5)
    assert most == 2 and order == list(range(20))
    assert queue.taken == 20 and queue.max_waiting == 18 and queue.waiting == 0
    async with queue.turn():  # every place was given back
        assert queue.waiting == 0


async def test_a_line_longer_than_the_wait_budget_is_refused() -> None:
    now = [0.0]
    queue = JoinQueue(concurrency=1, max_wait=1.0, clock=lambda: now[0])
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.turn():
            now[0] += 0.5  # each turn is seen taking 0.5 s
            await release.wait()

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(hold()) for _ in range(50)]
    await asyncio.sleep(0)
    assert queue.waiting == 50  # the first turn's length is not known yet: 5 ms assumed
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters), 5)
    # turns now measured at ~0.5 s: with two in line, a third would wait > 1 s
    release.clear()
    holders = [asyncio.ensure_future(hold()) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailable):
        async with queue.turn():
            pass
    assert queue.refused == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(*holders), 5)


async def test_a_cancelled_waiter_gives_its_place_on() -> None:
    queue = JoinQueue(concurrency=1, max_wait=60)
    release = asyncio.Event()
    got: list[int] = []

    async def join(i: int) -> None:
        async with queue.turn():
            got.append(i)
            await release.wait()

    tasks = [asyncio.ensure_future(join(i)) for i in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # waiting in line
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert got == [0, 2] and queue.waiting == 0
    async with queue.turn():
        pass


async def test_bursting_lasts_a_window_after_a_burst_but_not_after_a_trickle() -> None:
    now = [100.0]
    queue = JoinQueue(concurrency=1, clock=lambda: now[0])
    assert not queue.bursting()
    async with queue.turn():  # a lone join: bursting only while it runs (review finding 7)
        assert queue.bursting()
    assert not queue.bursting()
    release = asyncio.Event()

    async def join() -> None:
        async with queue.turn():
            await release.wait()

    tasks = [asyncio.create_task(join()) for _ in range(2)]  # the second waits in line
    await asyncio.sleep(0)
    assert queue.waiting == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert queue.bursting()  # a burst was taken in turns: its window follows it
    now[0] += RECENT - 0.1
    assert queue.bursting()
    now[0] += 0.2
    assert not queue.bursting()


async def test_a_busy_loop_refuses_joins_unless_a_burst_is_taken_in_turns() -> None:
    """The overload guard's busy share refuses a join when no burst is under way; during one,
    the join waits in line, and only a late loop refuses it."""
    lag = LoopLagMonitor()
    lag.record(0.0, time.monotonic(), busy=0.95)
    service = ViewerService(lambda key, subject: None, overloaded=overload_check(lag, 0.5, 0.8))
    grant = Grant("viewer", "", time.time() + 60, anonymous=True)
    with pytest.raises(ServiceUnavailable):
        service._admit("room", grant)
    async with service.joins.turn():  # a burst under way
        service._admit("room", grant)  # waits in line instead (no refusal)
        lag.record(0.9, time.monotonic(), busy=0.95)  # the loop falls behind all the same
        with pytest.raises(ServiceUnavailable):
            service._admit("room", grant)
