"""A mixer thread that dies is restarted with backoff on the same hubs: the program's viewers
(and mix-minus listeners) keep their connections and resume. The fault is real: a layout the
worker cannot compute (NaN geometry) raises inside the mixer thread, through the stage's layout,
which is the worker's input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.mixer.codecs import OpusEncoder, VideoEncoder
from gateway.mixer.layout import LayoutSpec, Region
from gateway.mixer.program import RenditionSpec
from gateway.stage.anchor_hub import AnchorHub
from gateway.stage.director import MixerConfig, ProgramDirector
from relay.media.frames import CodecSpec, EncodedFrame, MediaKind
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from tests.live.test_live_path import wait_for
from tests.live.test_mixer_live import SMALL_STAGE, anchor_id, hears, mode, publish, shows
from tests.support.mixer_clients import watch_program
from tests.support.server import run_server
from tests.unit.test_mixer_units import solid, tone

CODECS: dict[MediaKind, CodecSpec] = {
    "video": CodecSpec("video", "H264", 90000),
    "audio": CodecSpec("audio", "opus", 48000),
}


def unusable_layout(anchor: str) -> LayoutSpec:
    """A custom layout whose region is NaN: ``compute_layout`` raises in the mixer thread (the
    API's validation never lets one in; the test puts it on the stage directly)."""
    return LayoutSpec(mode="custom", regions=((anchor, Region(float("nan"), 0, 0.5, 1)),))


@dataclass(eq=False)
class Feed:
    """An anchor as the director sees it (``AnchorFeed``): its hub and keyframe requests."""

    id: str
    hub: AnchorHub
    asked: int = 0

    def request_keyframe(self) -> None:
        self.asked += 1


async def pump(feeds: list[Feed], freqs: dict[str, float]) -> None:
    """Encoded frames into each anchor's hub in real time: Opus every 20 ms, H264 at ~17 fps
    (a keyframe whenever the mixer asks)."""
    video = {f.id: VideoEncoder("H264", 160, 90, 15, 100_000, 300) for f in feeds}
    audio = {f.id: OpusEncoder() for f in feeds}
    answered = {f.id: 0 for f in feeds}
    picture = solid((200, 30, 30), 160, 90)
    t0 = time.monotonic()
    for i in range(1_000_000):
        now = time.monotonic()
        for f in feeds:
            for p in audio[f.id].encode(tone(freqs[f.id], start=i * 960, amp=0.3)):
                f.hub.publish(EncodedFrame("audio", "opus", i * 960, (p,), p, True, now))
            if i % 3 == 0:
                key = f.asked > answered[f.id]
                answered[f.id] = f.asked
                for data, is_key in video[f.id].encode(picture, key):
                    frame = EncodedFrame("video", "H264", i * 1800, (), data, is_key, now)
                    f.hub.publish(frame)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))


@pytest.mark.timeout(60)
async def test_director_restarts_a_dead_mixer_with_backoff_on_the_same_hubs() -> None:
    broken = ""

    def layout() -> LayoutSpec:
        return unusable_layout(broken) if broken else LayoutSpec()

    config = MixerConfig(
        renditions=(RenditionSpec("main", 160, 90, 100_000),),
        fps=15,
        gop=30,
        restart_initial=0.1,
        restart_max=0.4,
    )
    hubs = {"main": FanoutHub(StreamKey("stage"), CODECS)}
    director = ProgramDirector(
        "stage",
        hubs,
        config,
        layout,
        dict,
        mixminus_hub=lambda aid: FanoutHub(
            StreamKey("stage", mixminus=aid), {"audio": CODECS["audio"]}
        ),
    )
    feeds = [Feed(a, AnchorHub(StreamKey("stage", anchor=a), CODECS)) for a in ("a", "b")]
    for f in feeds:
        f.hub.attach_source(f.request_keyframe)
    director.update(feeds)
    main = hubs["main"]
    viewer = main.add_viewer("viewer")
    listener = director.mixminus["a"].add_viewer("listener")
    task = asyncio.create_task(pump(feeds, {"a": 440.0, "b": 1000.0}))
    try:
        assert director.mode == "mixed" and director.mixer_state == "running"
        assert await wait_for(lambda: main.stats.keyframes_in >= 1, 10)
        assert await wait_for(lambda: director.mixminus["a"].stats.frames_in >= 10, 10)

        broken = "a"  # every mixer thread dies at its first video tick from now on
        t_fault = time.monotonic()
        assert await wait_for(lambda: director.mixer_state == "restarting", 5)
        assert director.last_error is not None and "NaN" in director.last_error
        assert await wait_for(lambda: director.restarts >= 2, 5)
        await asyncio.sleep(max(0.0, t_fault + 1.5 - time.monotonic()))
        # backoff 0.1, 0.2, 0.4, 0.4, ...: about 4-5 restarts in 1.5 s (without it: ~15)
        assert 2 <= director.restarts <= 7, director.restarts

        broken = ""  # the fault is gone: the next restart runs on
        frames, mm = main.stats.frames_in, director.mixminus["a"].stats.frames_in
        assert await wait_for(lambda: director.mixer_state == "running", 5)
        worker = director.worker
        assert await wait_for(lambda: main.stats.frames_in > frames + 30, 10)
        assert await wait_for(lambda: director.mixminus["a"].stats.frames_in > mm + 20, 10)
        assert director.worker is worker and worker is not None and worker.alive
        # the same hubs, each with its viewer still attached; a new source each restart
        assert hubs["main"] is main and main.viewers() == [viewer]
        assert director.mixminus["a"].viewers() == [listener]
        assert main.sources == 1 + director.restarts
        assert not main.closed.is_set() and director.mode == "mixed"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await director.aclose()
    assert not director.busy and director.mixer_state == "stopped"
    assert not director.mixminus


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_program_resumes_for_its_viewers_after_the_mixer_thread_dies() -> None:
    with run_server(stage=SMALL_STAGE) as server:
        room = "phoenix"
        gw = server.gateway
        a = await publish(server, room, "red")
        b = await publish(server, room, "green")
        assert await wait_for(lambda: mode(server, room) == "mixed", 10)
        viewer = await watch_program(server.base_url, f"/whep/{room}")
        grid = {(0.25, 0.5): "red", (0.75, 0.5): "green"}
        assert await shows(viewer, grid, 15)
        await hears(viewer, lambda lv: lv[440.0] > 0.3 and lv[1000.0] > 0.3, 10)
        a_id = anchor_id(a)
        a_token = gw.tokens.mint(room, "anchor", "anchor-red", 600)
        minus = await watch_program(
            server.base_url, f"/whep/{room}?mixminus={a_id}", token=a_token, kinds=("audio",)
        )
        await hears(minus, lambda lv: lv[1000.0] > 0.5 and lv[440.0] < 0.05, 15)
        hub = gw.stages.live_hub(room)
        pcs = (viewer.pc, minus.pc)
        stage = gw.stages.get(room)
        assert stage is not None

        # the fault: the mixer thread raises at its next video tick, and again after each restart
        server.call(lambda: setattr(stage, "layout", unusable_layout(a_id)))
        api_headers = {"X-API-Key": gw.operator_key}
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=api_headers, timeout=10
        ) as api:

            async def program() -> dict[str, Any]:
                return dict((await api.get(f"/v1/rooms/{room}/program")).json())

            deadline = time.monotonic() + 10
            prog = await program()
            while prog["mixer_restarts"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                prog = await program()
            assert prog["mixer_restarts"] >= 1, prog
            assert prog["mixer_state"] in ("restarting", "running"), prog
            assert "NaN" in str(prog["mixer_last_error"]) and prog["mode"] == "mixed"
            metrics = (await api.get("/metrics")).text
            assert f'stagecast_mixer_restarts_total{{room="{room}"}}' in metrics

            # the fault is gone: the next restart keeps running and the program comes back
            frozen = viewer.video_frames
            server.call(lambda: setattr(stage, "layout", None))
            t_fixed = time.monotonic()
            viewer.audio.clear()
            minus.audio.clear()
            assert await wait_for(lambda: viewer.video_frames > frozen + 10, 15)
            resumed = time.monotonic() - t_fixed
            assert await shows(viewer, grid, 10)
            await hears(viewer, lambda lv: lv[440.0] > 0.3 and lv[1000.0] > 0.3, 10)
            await hears(minus, lambda lv: lv[1000.0] > 0.5 and lv[440.0] < 0.05, 10)
            prog = await program()
            assert prog["mixer_state"] == "running" and prog["mixer_restarts"] >= 1, prog
            print(
                f"program back at the viewer {resumed:.2f} s after the fault was removed "
                f"({prog['mixer_restarts']} restarts)"
            )
            metrics = (await api.get("/metrics")).text
            assert f'stagecast_mixer_running{{room="{room}"}} 1.0' in metrics

        # nobody renegotiated: the same hub and the same peer connections, still connected
        assert gw.stages.live_hub(room) is hub
        assert (viewer.pc, minus.pc) == pcs
        for v in (viewer, minus):
            assert not v.ended.is_set() and v.pc.connectionState == "connected"
        for v in (viewer, minus):
            await v.close()
        await b.close()
        await a.close()
        assert await wait_for(lambda: not gw.anchors.sessions, 10)
