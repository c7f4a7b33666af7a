"""``GET /v1/runtime``: what the process holds right now, so leaks show up from outside
(soak runs, dashboards): tasks, threads, file descriptors, memory, live peer connections."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection
from fastapi import APIRouter, Query
from pydantic import BaseModel

from relay.ops.gc_freezer import thawed
from relay.ops.gc_pauses import GcPauses
from relay.ops.loop_stalls import LoopStallWatch
from relay.rtc.srtp_writer import NATIVE
from relay.rtc.viewers import ViewerService

from .anchors import AnchorService


class RuntimeView(BaseModel):
    tasks: int
    threads: int
    fds: int
    rss_bytes: int
    anchor_sessions: int
    viewer_sessions: int
    peer_connections: int | None
    uptime_s: float
    task_kinds: dict[str, int] | None = None
    """With ``deep``: running tasks by coroutine, to see what a leak is made of."""
    gc_collections: list[int] | None = None
    """Garbage collections per generation (0, 1, 2) since start: each stops the process."""
    gc_longest_pause_ms: list[float] | None = None
    loop_stalls: dict[str, Any] | None = None
    """With ``metrics.stall_trace``: the loop's lateness histogram and its longest stalls with
    the stack that held it."""
    native_send: bool
    """Viewers are sent to through the C loop (built, and ``media.native_send``); false: the
    Python loop, ~0.001 core more per viewer."""


def count_peer_connections() -> int:
    """Open RTCPeerConnections in the heap (a full gc pass over everything, the frozen too:
    on demand only)."""
    with thawed():  # (frozen objects are neither collected nor listed)
        gc.collect()
        return sum(
            1
            for o in gc.get_objects()
            if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"
        )


def task_kinds() -> dict[str, int]:
    """Running asyncio tasks counted by their coroutine's qualified name."""
    kinds: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        kinds[getattr(coro, "__qualname__", type(coro).__name__)] += 1
    return dict(sorted(kinds.items()))


def runtime_router(
    anchors: AnchorService,
    viewers: ViewerService,
    gc_pauses: GcPauses | None = None,
    stalls: Callable[[], LoopStallWatch | None] = lambda: None,
) -> APIRouter:
    router = APIRouter(tags=["operator"])
    started = time.monotonic()
    proc: Any = None  # psutil loads on the first call: ~1 MiB a node never asked need not hold

    @router.get("/runtime", response_model=RuntimeView)
    async def runtime(
        deep: bool = Query(False, description="also count peer connections (gc)"),
    ) -> RuntimeView:
        nonlocal proc
        if proc is None:  # imported off the loop: 15-100 ms cold (load 1-25)
            psutil = await asyncio.to_thread(importlib.import_module, "psutil")
            proc = psutil.Process(os.getpid())
        return RuntimeView(
            tasks=len(asyncio.all_tasks()),
            threads=threading.active_count(),
            fds=proc.num_fds(),
            rss_bytes=proc.memory_info().rss,
            anchor_sessions=len(anchors.sessions),
            viewer_sessions=len(viewers.sessions),
            peer_connections=count_peer_connections() if deep else None,
            uptime_s=round(time.monotonic() - started, 3),
            task_kinds=task_kinds() if deep else None,
            gc_collections=list(gc_pauses.collections) if gc_pauses else None,
            gc_longest_pause_ms=(
                [round(p * 1000, 3) for p in gc_pauses.longest] if gc_pauses else None
            ),
            loop_stalls=watch.book.summary() if (watch := stalls()) is not None else None,
            native_send=NATIVE and viewers.limits.native,
        )

    return router
