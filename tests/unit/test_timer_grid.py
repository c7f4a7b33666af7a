"""The timer grid: periodic jobs of periods that divide one another fall due together."""

from __future__ import annotations

import asyncio

from relay.ops.timer_grid import first_tick, next_tick, sleep_to_tick


def test_ticks() -> None:
    assert next_tick(3.0, 1.0) == 4.0 and next_tick(3.2, 1.0) == 4.0
    assert first_tick(3.0, 1.0) == 3.0 and first_tick(3.01, 1.0) == 4.0
    assert abs(next_tick(12.31, 0.2) - 12.4) < 1e-9
    for now in (0.0, 7.77, 12345.6789):  # a whole second is on every finer grid too
        tick = next_tick(now, 1.0)
        assert abs(first_tick(tick - 0.15, 0.2) - tick) < 1e-9
        assert abs(first_tick(tick - 0.05, 0.1) - tick) < 1e-9


async def test_jobs_of_dividing_periods_wake_in_the_same_turn() -> None:
    """Each wake-up of the slow job is a wake-up of the fast one (the same instant of the loop's
    clock), started at different phases; plain sleeps of the same periods would not be."""
    loop = asyncio.get_running_loop()
    woke: dict[float, list[float]] = {0.05: [], 0.2: []}

    async def job(period: float) -> None:
        while True:
            await sleep_to_tick(period)
            woke[period].append(loop.time())

    fast = asyncio.create_task(job(0.05))
    await asyncio.sleep(0.013)  # another phase
    slow = asyncio.create_task(job(0.2))
    await asyncio.sleep(0.7)
    fast.cancel()
    slow.cancel()
    assert len(woke[0.2]) >= 3
    for t in woke[0.2]:
        assert any(abs(t - f) < 0.002 for f in woke[0.05]), (t, woke[0.05])
