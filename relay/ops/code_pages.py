"""Shared libraries' code pages that a node touched once (starting, setting up a session) and no
longer runs, released from its resident set.

Starting a node runs a great deal of native code once: the interpreter's compiler and
unmarshaller over ~800 modules, pydantic-core building every validator, OpenSSL and
cryptography making the DTLS certificate; a session's setup (SDP, the DTLS handshake) runs more.
This kernel maps a library's pages in large folios, so one call into a library leaves megabytes
of it resident: ~19-23 MiB of text and read-only data after startup or an anchor's handshake, of
which an idle node with one ingest runs ~6 MiB (measured: BENCHMARKS.md, "Idle memory").
``release`` unmaps the clean file-backed pages of the process's read-only and executable
mappings (``MADV_DONTNEED``); what the node runs next faults back in from the page cache (minor
faults, no disk read: the pages stay cached, now reclaimable by the kernel like any unmapped
cache). A mapping holding any anonymous (copy-on-write) or dirty page, such as a library's
relocated RELRO segment, and anything writable, is left alone: dropping those would lose data.
So this lowers the node's RSS, not the machine's page cache."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
FIRST = 2.0
"""Seconds from start to the first release: past uvicorn's own startup, which follows the
lifespan's."""
PERIOD = 30.0
"""Seconds between looks at the file-backed resident memory (one read of smaps_rollup)."""
SETTLE = 5.0
"""Seconds after a release to the look that takes the baseline: by then the node has faulted
back what it runs (~6 MiB with one ingest, within a second)."""
REGROWTH_KIB = 4096
"""Released again once the file-backed resident memory grew this much over the baseline (a
session's setup: ~15 MiB), so a steady node is left alone: measured from right after a release
instead, the working set faulting back in made every look release again."""


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kib: int
    anonymous_kib: int
    dirty_kib: int


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a ``/proc/PID/smaps`` text, with the counters ``releasable`` needs."""
    found: list[Mapping] = []
    head: list[str] = []
    rss = anonymous = dirty = 0
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if not key.endswith(":"):
            if head:
                found.append(_mapping(head, rss, anonymous, dirty))
            head, rss, anonymous, dirty = line.split(), 0, 0, 0
        elif key == "Rss:":
            rss = int(rest.split()[0])
        elif key == "Anonymous:":
            anonymous = int(rest.split()[0])
        elif key in ("Private_Dirty:", "Shared_Dirty:"):
            dirty += int(rest.split()[0])
    if head:
        found.append(_mapping(head, rss, anonymous, dirty))
    return found


def _mapping(head: list[str], rss: int, anonymous: int, dirty: int) -> Mapping:
    start, end = (int(x, 16) for x in head[0].split("-"))
    return Mapping(start, end, head[1], head[5] if len(head) > 5 else "", rss, anonymous, dirty)


def releasable(mappings: list[Mapping]) -> list[Mapping]:
    """Resident, clean, never-written private file mappings: the text and read-only data of a
    file on disk (not ``[vdso]`` and the like), with no anonymous or dirty page in them."""
    return [
        m
        for m in mappings
        if m.path.startswith("/")
        and m.perms[1] == "-"
        and m.perms[3] == "p"
        and m.rss_kib > 0
        and m.anonymous_kib == 0
        and m.dirty_kib == 0
    ]


def available() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/smaps").exists()


def release() -> int:
    """Unmap the clean file-backed pages of this process's read-only mappings; the KiB that
    were resident in them."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise  # the C library the process runs on
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    released = 0
    for m in releasable(parse_smaps(Path("/proc/self/smaps").read_text())):
        if madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            released += m.rss_kib
    return released


def file_resident_kib(pid: int | str = "self") -> int:
    """Resident memory that is not anonymous (file-backed pages, libraries' mostly), KiB."""
    kib: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split()[:2]
        kib[key] = int(value)
    return kib.get("Rss:", 0) - kib.get("Anonymous:", 0)


class ReleasePlan:
    """When to release (sans-I/O): at the first look, then whenever the file-backed resident
    memory grew by ``regrowth_kib`` over the baseline that the look ``SETTLE`` s after the last
    release took."""

    def __init__(self, regrowth_kib: int = REGROWTH_KIB) -> None:
        self.regrowth_kib = regrowth_kib
        self.baseline_kib: int | None = None

    def due(self, resident_kib: int) -> bool:
        return self.baseline_kib is None or resident_kib - self.baseline_kib >= self.regrowth_kib

    def settled(self, resident_kib: int) -> None:
        """The file-backed resident memory once the node runs again after a release."""
        self.baseline_kib = resident_kib


class CodePages:
    """Releases the node's idle code pages ``first`` s after start, takes the baseline
    ``settle`` s after each release, and looks every ``period`` s for a session's setup having
    brought megabytes back over it."""

    def __init__(
        self,
        plan: ReleasePlan | None = None,
        first: float = FIRST,
        period: float = PERIOD,
        settle: float = SETTLE,
    ) -> None:
        self.plan = plan or ReleasePlan()
        self.first = first
        self.period = period
        self.settle = settle
        self.releases = 0
        self.released_kib = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if available():
            self._task = asyncio.create_task(self._run(), name="code-pages")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def step(self) -> bool:
        """One look; whether it released."""
        if not self.plan.due(file_resident_kib()):
            return False
        kib = release()
        self.releases += 1
        self.released_kib += kib
        log.debug("released %.1f MiB of idle code pages", kib / 1024)
        return True

    async def _run(self) -> None:
        await asyncio.sleep(self.first)
        while True:
            try:
                if await off_loop(self.step):
                    await asyncio.sleep(self.settle)
                    self.plan.settled(await off_loop(file_resident_kib))
            except OSError:
                log.exception("releasing idle code pages failed; not trying again")
                return
            await asyncio.sleep(self.period)


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` on a thread of its own that ends with it: reading smaps makes the kernel walk
    the process's page tables, and parsing it is ~10k lines (a release took 20-55 ms at load 16,
    a look 2-12 ms), which would stall every stream on the event loop; and no pool thread stays
    behind for a call every 30 s."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled: the node is stopping
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="code-pages", daemon=True).start()
    return await future
