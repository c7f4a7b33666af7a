"""``run_now`` and ``ntp_ms`` (relay/rtc/adapter.py): the shared port runs aiortc's RTP handling
coroutine in its read callback, and a task takes over only when the coroutine suspends."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import clock as aiortc_clock

from relay.rtc.adapter import ntp_ms, run_now


async def test_a_coroutine_that_does_not_suspend_finishes_at_once() -> None:
    seen: list[int] = []

    async def handle(n: int) -> None:
        seen.append(n)

    assert run_now(handle(1)) is None
    assert run_now(handle(2)) is None
    assert seen == [1, 2]  # in call order, with no turn of the loop between


async def test_a_task_takes_over_where_the_coroutine_suspended() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def handle() -> None:
        seen.append("before")
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield after the hand-over
        seen.append("after")

    task = run_now(handle())
    assert task is not None and seen == ["before"]
    await asyncio.sleep(0.01)
    assert not task.done() and seen == ["before"]  # still waiting on the same future
    gate.set_result(7)
    await asyncio.wait_for(task, 1.0)
    assert seen == ["before", 7, "after"]


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def handle() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = run_now(handle())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert seen == ["cancelled"]


async def test_an_exception_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def fails_now() -> None:
        raise ValueError("bad packet")

    async def fails_later() -> None:
        await gate
        raise ValueError("bad later")

    assert run_now(fails_now()) is None
    task = run_now(fails_later())
    assert task is not None
    gate.set_result(None)
    await asyncio.wait_for(task, 1.0)  # the task ends normally: the error was logged
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("RTP handling failed") == 2


def test_ntp_ms_is_aiortcs_clock() -> None:
    before = aiortc_clock.current_ms()
    now = ntp_ms()
    after = aiortc_clock.current_ms()
    assert before - 1 <= now <= after + 1
