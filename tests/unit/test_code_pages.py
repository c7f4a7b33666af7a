"""Which mappings ``relay.ops.code_pages`` releases (only clean, private, read-only file pages),
when it releases again, and that releasing this very process's code pages leaves it running."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pydantic
import pytest

from relay.ops import code_pages
from relay.ops.code_pages import CodePages, ReleasePlan, parse_smaps, releasable

SMAPS = """\
7f0000000000-7f0000200000 r--p 00000000 fd:00 101  /usr/lib/libx.so
Size:               2048 kB
Rss:                1024 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000200000-7f0000800000 r-xp 00200000 fd:00 101  /usr/lib/libx.so
Size:               6144 kB
Rss:                5000 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000800000-7f0000810000 r--p 00800000 fd:00 101  /usr/lib/libx.so
Size:                 64 kB
Rss:                  64 kB
Shared_Dirty:          0 kB
Private_Dirty:        64 kB
Anonymous:            64 kB
7f0000810000-7f0000812000 rw-p 00810000 fd:00 101  /usr/lib/libx.so
Size:                  8 kB
Rss:                   8 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000900000-7f0000a00000 r-xp 00000000 fd:00 102  /opt/textrel.so
Size:               1024 kB
Rss:                 100 kB
Shared_Dirty:          0 kB
Private_Dirty:         4 kB
Anonymous:             0 kB
7f0000b00000-7f0000c00000 r--s 00000000 fd:00 103  /dev/shm/segment
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7f0000d00000-7f0000d01000 r--p 00000000 fd:00 104  /usr/lib/cold.so
Size:                  4 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000e00000-7f0000e40000 rw-p 00000000 00:00 0
Size:                256 kB
Rss:                 256 kB
Anonymous:           256 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
"""


def test_only_clean_private_read_only_file_pages_are_released() -> None:
    mappings = parse_smaps(SMAPS)
    assert len(mappings) == 9
    assert mappings[2].anonymous_kib == 64 and mappings[4].dirty_kib == 4
    picked = [(hex(m.start), m.perms, m.rss_kib) for m in releasable(mappings)]
    # the library's rodata and text; not its RELRO (copy-on-write pages), its data, a text
    # with a written page, a shared mapping, one with nothing resident, anonymous memory, vdso
    assert picked == [("0x7f0000000000", "r--p", 1024), ("0x7f0000200000", "r-xp", 5000)]


def test_released_again_only_after_regrowth_over_the_settled_baseline() -> None:
    plan = ReleasePlan(regrowth_kib=4096)
    assert plan.due(20_000)  # the first look always releases
    plan.settled(9_000)  # what the node faulted back in after it: its working set
    assert not plan.due(9_000) and not plan.due(13_095)
    assert plan.due(13_096)  # a session's setup brought 4 MiB back
    plan.settled(9_500)
    assert not plan.due(12_000)


def test_release_unmaps_this_process_code_and_it_keeps_running() -> None:
    """In this very process: its resident code pages drop, and code of the released libraries
    (OpenSSL's hashing, pydantic-core's validators) runs afterwards."""
    if not code_pages.available():
        pytest.skip("no /proc/self/smaps (not Linux)")
    before = code_pages.file_resident_kib()
    released = code_pages.release()
    after = code_pages.file_resident_kib()
    assert released > 1024 and after < before - 1024, (before, released, after)
    assert hashlib.sha256(b"x").hexdigest().startswith("2d711642")
    assert pydantic.TypeAdapter(list[int]).validate_python(["1", 2]) == [1, 2]


def test_the_driver_releases_off_the_loop_then_takes_its_baseline() -> None:
    """The node's driver: the first look releases (on a thread of its own, which ends), the
    look ``settle`` s later records the baseline, and stopping it ends its task."""
    if not code_pages.available():
        pytest.skip("no /proc/self/smaps (not Linux)")

    class Plan(ReleasePlan):
        def __init__(self) -> None:
            super().__init__()
            self.taken = asyncio.Event()

        def settled(self, resident_kib: int) -> None:
            super().settled(resident_kib)
            self.taken.set()

    async def run() -> CodePages:
        plan = Plan()
        pages = CodePages(plan, first=0.0, period=60.0, settle=0.0)
        pages.start()
        await asyncio.wait_for(plan.taken.wait(), 10)
        await pages.stop()
        return pages

    pages = asyncio.run(run())
    assert pages.releases == 1 and pages.released_kib > 0
    assert pages.plan.baseline_kib is not None and pages.plan.baseline_kib > 0
    for thread in threading.enumerate():  # each look's thread ends once it has handed back
        if thread.name == "code-pages":
            thread.join(2)
    assert not any(t.name == "code-pages" for t in threading.enumerate())
