"""The loop stall watch names the code that held the event loop."""

from __future__ import annotations

import asyncio
import time

from relay.ops.loop_stalls import LoopStallWatch, StallBook


def test_the_book_buckets_lateness_and_keeps_the_last_stalls() -> None:
    book = StallBook(keep=2)
    for late in (0.001, 0.015, 0.3, 5.0):
        book.lateness(late)
    assert book.histogram()["<=10ms"] == 1 and book.histogram()["<=20ms"] == 1
    assert book.histogram()["<=500ms"] == 1 and book.histogram()[">2000ms"] == 1
    for i in range(3):
        book.stall(0.1 * (i + 1), 0.0, 0.1, ("a.py:1 outer", f"b.py:{i} inner"))
    assert [s.seq for s in book.stalls] == [2, 3]
    summary = book.summary()
    assert summary["seen"] == 3 and summary["longest_ms"] == 5000.0
    assert [s["seq"] for s in summary["stalls"]] == [3, 2]  # longest first


def blocking_step_of_the_test(seconds: float) -> None:
    time.sleep(seconds)


async def test_a_blocked_loop_is_caught_with_its_stack() -> None:
    watch = LoopStallWatch(threshold=0.05, tick=0.01)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(blocking_step_of_the_test, 0.25)
        for _ in range(500):  # (the watchdog thread records it once the loop is back)
            if watch.book.stalls:
                break
            await asyncio.sleep(0.02)
    finally:
        await watch.stop()
    stall = max(watch.book.stalls, key=lambda s: s.seconds)
    assert stall.seconds >= 0.2
    assert any("blocking_step_of_the_test" in frame for frame in stall.stack)
    assert watch.book.longest >= 0.2
