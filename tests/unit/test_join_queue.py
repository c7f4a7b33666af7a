"""Joins take turns (relay.rtc.join_queue): a flash crowd waits in line instead of being
refused by the overload guard, and is refused only beyond the line's bound or deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from relay.auth.access import Grant
from relay.errors import ServiceUnavailable
from relay.ops.loop_lag import LoopLagMonitor, overload_check
from relay.rtc.join_queue import RECENT, JoinLine, JoinQueue
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
            await release.wait()
            now[0] += 0.5  # turns start 0.5 s apart

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(hold()) for _ in range(50)]
    await asyncio.sleep(0)
    assert queue.waiting == 50  # the line's rate is not known yet: 100 turns/s assumed
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters), 5)
    assert queue.refused == 0 and queue.longest_wait >= 20
    # turns now measured ~0.5 s apart: with two in line, a fourth would wait ~1.5 s
    release.clear()
    holders = [asyncio.ensure_future(hold()) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailable) as refused:
        async with queue.turn():
            pass
    assert refused.value.headers == {"Retry-After": "2"} and queue.refused == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(*holders), 5)


async def test_a_join_that_waits_give_up_seconds_is_refused_and_the_line_moves_on() -> None:
    queue = JoinQueue(concurrency=1, max_wait=60, give_up=0.2)
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.turn():
            await release.wait()

    first = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        async with queue.turn():
            pass
    assert 0.15 < time.monotonic() - t0 < 2 and queue.refused == 1 and queue.waiting == 0
    release.set()
    await asyncio.wait_for(first, 5)
    async with queue.turn():  # its place was not lost
        pass


async def test_answered_joins_hold_a_connecting_place_until_connected_or_the_hold_ends() -> None:
    """A flash crowd's handshakes are bounded too: a new turn waits while ``max_connecting``
    answered joins are still connecting; a client that never connects holds its place only
    for ``hold`` seconds."""
    queue = JoinQueue(concurrency=2, max_connecting=2, max_wait=60)
    releases: list[Callable[[], None]] = []
    started: list[int] = []

    async def join(i: int, hold: float = 60.0) -> None:
        async with queue.turn() as ticket:
            started.append(i)
            releases.append(ticket.connecting(hold))

    await asyncio.wait_for(asyncio.gather(join(0), join(1, hold=0.2)), 5)
    assert queue.connecting == 2
    third = asyncio.ensure_future(join(2))
    await asyncio.sleep(0.05)
    assert started == [0, 1] and queue.waiting == 1  # no connecting place free
    releases[0]()  # the first connected
    releases[0]()  # (twice: counted once)
    await asyncio.wait_for(third, 5)
    assert started == [0, 1, 2] and queue.connecting == 2
    fourth = asyncio.ensure_future(join(3))
    await asyncio.wait_for(fourth, 5)  # the second never connects: its hold of 0.2 s ran out
    assert started == [0, 1, 2, 3]
    for release in releases:
        release()
    assert queue.connecting == 0


async def test_another_nodes_pull_goes_to_the_head_of_the_line() -> None:
    queue = JoinQueue(concurrency=1, max_wait=60)
    release = asyncio.Event()
    order: list[str] = []

    async def join(name: str, first: bool = False) -> None:
        async with queue.turn(first=first):
            order.append(name)
            await release.wait()

    tasks = [asyncio.ensure_future(join(n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(join("edge", first=True)))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["a", "edge", "b", "c"]


def test_the_line_learns_its_rate_only_while_joins_wait() -> None:
    """The gap between two turns counts only while someone waited: a quiet hour before a
    burst does not make the burst's first arrivals expect an hour's wait."""
    line = JoinLine(concurrency=1, max_wait=8.0)
    line.take(0.0)
    line.answered(0.01, connecting=False, waited=False)
    assert line.arrive().start
    line.take(3600.0)  # an hour later: a lone join
    for i in range(10):
        line.enqueue(i, 3600.0)
    line.answered(3600.02, connecting=False, waited=False)
    assert line.hand_out() == [0]
    line.started(3600.02, 0.02)
    assert line.interval < 0.02  # learned from 20 ms, not from the hour
    assert 9 * 0.01 < line.expected_wait() < 11 * 0.02
    assert line.arrive().refuse is False and line.refused == 0


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
    """The overload guard refuses a join when no burst is under way; during one, the join
    waits in line, and even a late loop does not refuse it."""
    lag = LoopLagMonitor()
    lag.record(0.0, time.monotonic(), busy=0.95)
    service = ViewerService(lambda key, subject: None, overloaded=overload_check(lag, 0.5, 0.8))
    grant = Grant("viewer", "", time.time() + 60, anonymous=True)
    with pytest.raises(ServiceUnavailable):
        service._admit("room", grant)
    async with service.joins.turn():  # a burst under way
        service._admit("room", grant)  # waits in line instead (no refusal)
        lag.record(0.9, time.monotonic(), busy=0.95)  # the loop falls behind all the same
        service._admit("room", grant)
