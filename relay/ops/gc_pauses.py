"""How long Python's cyclic garbage collector stops the process, per generation.

A collection runs on whichever thread allocated last, and while it runs nothing else does: on
the event loop that is every stream of the node at once. The loop-lag monitor sees the result;
this says whether the collector was the cause (at 100 viewers a full collection scans ~200k
objects, ~1,700 of them per viewer)."""

from __future__ import annotations

import gc
import time
from typing import Any

GENERATIONS = (0, 1, 2)


class GcPauses:
    """Counts collections and their pause times while installed (``gc.callbacks`` is the
    process's: every collection counts, whichever thread ran it)."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._started: float | None = None
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        if self._started is None:
            return
        pause = self._clock() - self._started
        self._started = None
        g = int(info.get("generation", 2))
        if g in GENERATIONS:
            self.collections[g] += 1
            self.seconds[g] += pause
            self.longest[g] = max(self.longest[g], pause)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
