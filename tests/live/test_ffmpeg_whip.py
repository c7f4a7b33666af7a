"""Any standard WHIP client works: ffmpeg's ``whip`` muxer (the binary the imageio-ffmpeg wheel
carries) pushes a lavfi test pattern and tone; an aiortc WHEP viewer decodes what it sent."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import imageio_ffmpeg
import pytest

from gateway.synthetic import whep_watch
from relay.rtc import rtp_reader
from tests.support.ffmpeg_whip import whip_push_argv
from tests.support.server import RunningServer


@contextlib.asynccontextmanager
async def ffmpeg_process(argv: list[str]):  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def stderr_tail(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    with contextlib.suppress(TimeoutError):
        data = await asyncio.wait_for(proc.stderr.read(), 5)
        return data.decode(errors="replace")[-2000:]
    return ""


async def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


@pytest.mark.timeout(60)
async def test_ffmpeg_whip_push_reaches_a_viewer(server: RunningServer) -> None:
    room = "ffmpeg"
    url = f"{server.base_url}/whip/{room}"
    argv = whip_push_argv(imageio_ffmpeg.get_ffmpeg_exe(), url, server.anchor_token(room), 6)
    async with ffmpeg_process(argv) as proc:
        live = await wait_for(
            lambda: server.gateway.stages.live_hub(room) is not None or proc.returncode is not None,
            10,
        )
        if not live or server.gateway.stages.live_hub(room) is None:
            pytest.fail(f"ffmpeg did not go live:\n{await stderr_tail(proc)}")
        hub = server.gateway.stages.live_hub(room)
        assert hub is not None
        assert {k: c.name for k, c in hub.codecs.items()} == {"video": "H264", "audio": "opus"}

        viewer = await whep_watch(server.base_url, room)
        try:
            assert await wait_for(lambda: viewer.video_frames >= 45, 8), (
                f"{viewer.video_frames} frames\n{await stderr_tail(proc)}"
            )
            ttff = viewer.time_to_first_frame
            assert ttff is not None and ttff < 2.0, ttff
            assert viewer.audio_frames > 50 and max(viewer.audio_rms) > 100
            if rtp_reader.NATIVE:  # most packets handled whole by the C lanes of the receive path
                (session,) = server.gateway.anchors.sessions.values()
                assert session.ingests.laned > session.ingests.packets // 2, (
                    session.ingests.laned,
                    session.ingests.packets,
                )
                port = server.gateway.transport.port
                assert port is not None and port.laned > 0  # taken in the port's read call
            # ffmpeg stops after its -t and DELETEs its session: the viewer sees the end
            await asyncio.wait_for(proc.wait(), 15)
            assert proc.returncode == 0, await stderr_tail(proc)
            await asyncio.wait_for(viewer.ended.wait(), 10)
            assert await wait_for(lambda: not server.gateway.anchors.sessions, 5)
        finally:
            await viewer.close()


@pytest.mark.timeout(30)
async def test_ffmpeg_whip_push_with_a_wrong_token_is_refused(server: RunningServer) -> None:
    room = "ffmpeg-denied"
    url = f"{server.base_url}/whip/{room}"
    argv = whip_push_argv(imageio_ffmpeg.get_ffmpeg_exe(), url, "not-a-token", 2)
    async with ffmpeg_process(argv) as proc:
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode != 0
        assert "401" in await stderr_tail(proc)
    assert server.gateway.stages.live_hub(room) is None
