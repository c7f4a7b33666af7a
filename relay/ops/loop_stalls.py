"""Which code holds the event loop when it stalls: a watchdog thread samples the loop thread's
stack while one step runs too long.

``LoopLagMonitor`` says *that* the loop was late (at 0.1 s resolution); this says *where*:
a tick task stamps the time every ``tick`` s, and a thread that finds the stamp older than
``threshold`` takes the loop thread's Python stack (``sys._current_frames``). A step that
holds the GIL throughout (a cyclic GC collection, a C call that does not release it) cannot be
sampled while it runs: the garbage collector's share of each stall is counted apart (its own
``gc.callbacks`` clock), and the stack is the one the loop had when the thread got in.
Off by default (``metrics.stall_trace``): the thread wakes every ``tick`` / 2."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from sys import _current_frames  # (documented in sys; a thread's current frame)
from typing import Any

log = logging.getLogger("stagecast.stalls")

BUCKETS_MS = (10, 20, 50, 100, 200, 500, 1000, 2000)  # upper bounds of the lag histogram


@dataclass
class StallRecord:
    """One stall: how long the loop went without a tick, the collector's share of it, and the
    innermost frames of the loop thread's stack seen while it lasted."""

    seq: int  # 1, 2, ... in the order seen (a reader diffs two summaries by it)
    seconds: float
    gc_seconds: float
    cpu_seconds: float  # the loop thread's CPU in it (less than ``seconds``: it waited for a core)
    stack: tuple[str, ...]


@dataclass
class StallBook:
    """Sans-I/O: a histogram of the tick's lateness (ms buckets, the last one open) and the
    stalls over the threshold, their stacks counted by innermost frames."""

    keep: int = 200
    seen: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    longest: float = 0.0
    stalls: list[StallRecord] = field(default_factory=list)
    sites: Counter[str] = field(default_factory=Counter)

    def lateness(self, late: float) -> None:
        ms = late * 1000
        i = next((i for i, b in enumerate(BUCKETS_MS) if ms <= b), len(BUCKETS_MS))
        self.counts[i] += 1
        self.longest = max(self.longest, late)

    def stall(
        self, seconds: float, gc_seconds: float, cpu_seconds: float, stack: tuple[str, ...]
    ) -> StallRecord:
        self.seen += 1
        record = StallRecord(self.seen, seconds, gc_seconds, cpu_seconds, stack)
        self.stalls.append(record)
        del self.stalls[: -self.keep]
        self.sites[" <- ".join(record.stack[-3:][::-1]) or "?"] += 1
        return record

    def histogram(self) -> dict[str, int]:
        labels = [f"<={b}ms" for b in BUCKETS_MS] + [f">{BUCKETS_MS[-1]}ms"]
        return dict(zip(labels, self.counts, strict=True))

    def summary(self) -> dict[str, Any]:
        return {
            "lateness_ms": self.histogram(),
            "longest_ms": round(self.longest * 1000, 1),
            "seen": self.seen,
            "stalls": [
                {
                    "seq": s.seq,
                    "ms": round(s.seconds * 1000, 1),
                    "gc_ms": round(s.gc_seconds * 1000, 1),
                    "cpu_ms": round(s.cpu_seconds * 1000, 1),
                    "stack": list(s.stack),
                }
                for s in sorted(self.stalls, key=lambda s: -s.seconds)[:20]
            ],
            "sites": dict(self.sites.most_common(15)),
        }


class LoopStallWatch:
    """The tick task on the loop and the watchdog thread beside it."""

    def __init__(self, threshold: float = 0.05, tick: float = 0.01, depth: int = 12) -> None:
        self.threshold = threshold
        self.tick = tick
        self.depth = depth
        self.book = StallBook()
        self._stamp = time.monotonic()
        self._stamp_gc = 0.0  # the collector's total at the stamp
        self._stamp_cpu = 0.0  # the loop thread's CPU clock at the stamp
        self._gc_total = 0.0  # the collector's seconds so far (its own thread-safe-enough sum)
        self._gc_started: float | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_total += time.perf_counter() - self._gc_started
            self._gc_started = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._stamp = time.monotonic()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._ticks(), name="loop-stall-ticks")
        self._thread = threading.Thread(target=self._watch, name="loop-stall-watch", daemon=True)
        self._thread.start()

    async def _ticks(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            self._stamp_gc = self._gc_total
            self._stamp_cpu = time.thread_time()
            self._stamp = now
            self.book.lateness(max(0.0, now - t0 - self.tick))

    def _frames(self) -> tuple[str, ...]:
        frame = _current_frames().get(self._loop_thread)
        if frame is None:
            return ()
        summary = traceback.extract_stack(frame, limit=self.depth)
        return tuple(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in summary)

    def _watch(self) -> None:
        while not self._stop.wait(self.tick / 2):
            stamp = self._stamp
            if time.monotonic() - stamp <= self.threshold:
                continue
            gc0, cpu0 = self._stamp_gc, self._stamp_cpu
            stack = self._frames()  # the first look inside this stall
            while self._stamp == stamp and not self._stop.wait(self.tick / 2):
                pass
            seconds = self._stamp - stamp - self.tick
            cpu = self._stamp_cpu - cpu0  # (stamped by the tick that ended the stall)
            record = self.book.stall(seconds, self._gc_total - gc0, cpu, stack)
            log.warning(
                "event loop stalled %.0f ms (cpu %.0f ms, gc %.0f ms) in %s",
                seconds * 1000,
                cpu * 1000,
                record.gc_seconds * 1000,
                " <- ".join(stack[-4:][::-1]),
            )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            self._thread.join(1)
            self._thread = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
