"""``stagecast serve`` releases its idle code pages (``limits.release_code_pages``): two real
nodes, one with the setting off; the one that releases holds megabytes fewer file-backed pages
resident, and still takes an anchor and a viewer afterwards (their setup faults the code it needs
back in), then releases again what that setup brought back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from gateway.launcher import free_port, free_udp_port, wait_healthy
from gateway.synthetic import whep_watch
from relay.ops import code_pages
from tests.support.small_anchor import publish_small_anchor

SECRET = "s" * 40


def start_node(release: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_WEBRTC__ADDRESSES": '["127.0.0.1"]',
        "STAGECAST_LIMITS__RELEASE_CODE_PAGES": "true" if release else "false",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    argv += ["--udp-port", str(free_udp_port())]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return proc, f"http://127.0.0.1:{port}"


async def anchor_and_viewer(base: str) -> float | None:
    """An anchor publishes and a viewer watches; the viewer's time to first frame, s."""
    publisher = await publish_small_anchor(base, SECRET)
    try:
        framed = asyncio.Event()
        viewer = await whep_watch(base, "demo", on_frame=lambda _: framed.set())
        try:
            await asyncio.wait_for(framed.wait(), 20)
            return viewer.time_to_first_frame
        finally:
            await viewer.close()
    finally:
        await publisher.close()


@pytest.mark.skipif(not code_pages.available(), reason="no /proc/self/smaps (not Linux)")
@pytest.mark.timeout(150)
def test_node_releases_idle_code_pages_and_keeps_serving() -> None:
    nodes = [start_node(True), start_node(False)]
    try:
        for _, base in nodes:
            wait_healthy(base, 60)
        time.sleep(code_pages.FIRST + code_pages.SETTLE + 1.5)  # released, baseline taken
        (on, on_base), (off, _) = nodes
        kept_on = code_pages.file_resident_kib(on.pid)
        kept_off = code_pages.file_resident_kib(off.pid)
        assert kept_on < kept_off - 8 * 1024, (kept_on, kept_off)  # ~19 MiB here

        ttff = asyncio.run(anchor_and_viewer(on_base))
        assert ttff is not None and ttff < 5, ttff
        assert on.poll() is None
        after_setup = code_pages.file_resident_kib(on.pid)
        assert after_setup > kept_on + code_pages.REGROWTH_KIB, (kept_on, after_setup)
        deadline = time.monotonic() + code_pages.PERIOD + 5  # the next look releases again
        while code_pages.file_resident_kib(on.pid) > after_setup - code_pages.REGROWTH_KIB:
            assert time.monotonic() < deadline, (kept_on, after_setup)
            time.sleep(1)
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            proc.wait(15)
