"""Co-hosting end to end over real sockets: aiortc anchors sending solid colours and sine tones
of distinct frequencies, one viewer that never renegotiates while the stage goes from one anchor
(passthrough) to three (mixed) and back."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.synthetic import Publisher, ToneAudioTrack, whip_publish
from tests.mixer_clients import RGB, ProgramViewer, SolidColourTrack, watch_program
from tests.server import RunningServer, run_server
from tests.test_live_path import wait_for

SMALL_STAGE = {
    "fps": 15,
    "renditions": [
        {"name": "main", "width": 320, "height": 180, "video_bitrate_kbps": 400},
        {"name": "low", "width": 160, "height": 90, "video_bitrate_kbps": 150},
    ],
}
TONES = {"red": 440.0, "green": 1000.0, "blue": 2500.0}


async def publish(server: RunningServer, room: str, colour: str, **kw: object) -> Publisher:
    token = server.gateway.tokens.mint(room, "anchor", f"anchor-{colour}", 600)
    return await whip_publish(
        server.base_url,
        room,
        token,
        video=SolidColourTrack(RGB[colour]),  # type: ignore[arg-type]
        audio=ToneAudioTrack(TONES[colour], amplitude=0.25),
        **kw,  # type: ignore[arg-type]
    )


def mode(server: RunningServer, room: str) -> str:
    d = server.gateway.anchors.directors.get(room)
    return d.mode if d is not None else "idle"


async def shows(
    viewer: ProgramViewer, expect: dict[tuple[float, float], str | None], timeout: float
) -> bool:
    def ok() -> bool:
        return all(viewer.colour_at(x, y) == c for (x, y), c in expect.items())

    return await wait_for(ok, timeout, step=0.02)


async def hears(
    viewer: ProgramViewer, cond: Callable[[dict[float, float]], bool], timeout: float
) -> dict[float, float]:
    freqs = list(TONES.values())
    deadline = time.monotonic() + timeout
    levels = viewer.tones(freqs)
    while time.monotonic() < deadline:
        levels = viewer.tones(freqs)
        if cond(levels):
            return levels
        await asyncio.sleep(0.1)
    raise AssertionError(f"audio never matched: {levels}")


@pytest.mark.timeout(150)
async def test_stage_goes_from_one_to_three_anchors_and_back_without_renegotiation() -> None:
    with run_server(stage=SMALL_STAGE) as server:
        room = "costage"
        gw = server.gateway
        a = await publish(server, room, "red")
        assert await wait_for(lambda: gw.stages.live_hub(room) is not None, 10)
        viewer = await watch_program(server.base_url, f"/whep/{room}")
        # a lone anchor passes through: its own picture, its own tone
        assert await shows(viewer, {(0.5, 0.5): "red"}, 15), viewer.colour_at(0.5, 0.5)
        assert mode(server, room) == "passthrough"
        await hears(viewer, lambda lv: lv[440.0] == 1.0 and lv[1000.0] < 0.05, 10)
        hub = gw.stages.live_hub(room)
        pc = viewer.pc

        # a second anchor: the mixer takes over the same hub; grid of two, both tones
        b = await publish(server, room, "green")
        assert await wait_for(lambda: mode(server, room) == "mixed", 10)
        assert await shows(viewer, {(0.25, 0.5): "red", (0.75, 0.5): "green"}, 15)
        await hears(viewer, lambda lv: lv[440.0] > 0.3 and lv[1000.0] > 0.3, 10)

        # the low rendition is a second hub with the same program, picked by URL
        low = await watch_program(server.base_url, f"/whep/{room}?rendition=low")
        assert await shows(low, {(0.25, 0.5): "red", (0.75, 0.5): "green"}, 15)
        assert low.picture.shape[:2] == (90, 160)
        # each anchor's own stream can be pulled by a co-host
        a_id = gw.stages.get(room).anchor_ids[0]  # type: ignore[union-attr]
        pull = await watch_program(server.base_url, f"/whep/{room}?anchor={a_id}")
        assert await shows(pull, {(0.5, 0.5): "red", (0.1, 0.1): "red"}, 15)

        # a third: 2x2 grid, the fourth slot empty; three tones
        c = await publish(server, room, "blue")
        grid3 = {
            (0.25, 0.25): "red",
            (0.75, 0.25): "green",
            (0.25, 0.75): "blue",
            (0.75, 0.75): None,
        }
        assert await shows(viewer, grid3, 15)
        await hears(viewer, lambda lv: min(lv.values()) > 0.3, 10)

        headers = {"X-API-Key": gw.operator_key}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as api:
            ids = (await api.get(f"/v1/rooms/{room}/program")).json()["anchors"]
            assert len(ids) == 3
            prog = (await api.get(f"/v1/rooms/{room}/program")).json()
            assert prog["mode"] == "mixed" and prog["renditions"] == ["main", "low"]
            # a custom layout through the API moves the tiles within a second
            t0 = time.monotonic()
            resp = await api.put(
                f"/v1/rooms/{room}/layout",
                json={
                    "mode": "custom",
                    "regions": [
                        {"anchor_id": ids[2], "x": 0, "y": 0, "w": 0.5, "h": 1, "z": 0},
                        {"anchor_id": ids[0], "x": 0.5, "y": 0, "w": 0.5, "h": 1, "z": 0},
                        {"anchor_id": ids[1], "x": 0.6, "y": 0.6, "w": 0.3, "h": 0.3, "z": 5},
                    ],
                    "background": "#000000",
                },
            )
            assert resp.status_code == 200, resp.text
            moved = {(0.25, 0.5): "blue", (0.6, 0.4): "red", (0.75, 0.75): "green"}
            assert await shows(viewer, moved, 5)
            took = time.monotonic() - t0
            print(f"layout change seen by the viewer after {took:.2f} s")
            # 1 s at the viewer; a shared machine far past its cores (load > 2 per core) starves
            # every thread of the test process, so the bound is relaxed there
            bound = 1.0 if os.getloadavg()[0] < 2 * (os.cpu_count() or 1) else 3.0
            assert took < bound, f"layout change took {took:.2f} s"
            # speaker layout: green large on top, the others in the strip
            await api.put(f"/v1/rooms/{room}/layout", json={"mode": "speaker", "speaker": ids[1]})
            assert await shows(viewer, {(0.5, 0.35): "green"}, 5)

            # muting an anchor removes its tone, the others stay
            r = await api.post(f"/v1/rooms/{room}/anchors/{ids[1]}/audio", json={"muted": True})
            assert r.status_code == 200 and r.json()["muted"] is True
            await hears(
                viewer, lambda lv: lv[1000.0] < 0.05 and lv[440.0] > 0.3 and lv[2500.0] > 0.3, 10
            )
            await api.post(
                f"/v1/rooms/{room}/anchors/{ids[1]}/audio", json={"muted": False, "gain": 0.5}
            )
            await hears(viewer, lambda lv: 0.2 < lv[1000.0] < 0.8, 10)
            await api.put(f"/v1/rooms/{room}/layout", json={"mode": "grid"})

        # an anchor leaving shrinks the grid
        await c.close()
        assert await shows(viewer, {(0.25, 0.5): "red", (0.75, 0.5): "green"}, 15)
        await hears(viewer, lambda lv: lv[2500.0] < 0.05, 10)

        # back to one: passthrough resumes on the same hub, same connection
        await b.close()
        assert await wait_for(lambda: mode(server, room) == "passthrough", 10)
        assert await shows(viewer, {(0.1, 0.1): "red", (0.5, 0.5): "red", (0.9, 0.9): "red"}, 15)
        assert gw.stages.live_hub(room) is hub and viewer.pc is pc
        assert not viewer.ended.is_set() and pc.connectionState == "connected"
        assert hub is not None and hub.sources >= 3
        # the pulled anchor's stream is still there; the mixer thread is gone
        assert await wait_for(
            lambda: not any(t.name.startswith("mixer-") for t in threading.enumerate()), 5
        )

        for v in (viewer, low, pull):
            await v.close()
        await a.close()
        assert await wait_for(lambda: not gw.anchors.sessions, 10)


@pytest.mark.timeout(60)
async def test_full_stage_answers_409() -> None:
    with run_server(stage={**SMALL_STAGE, "max_anchors": 2}) as server:
        room = "full"
        a = await publish(server, room, "red")
        b = await publish(server, room, "green")
        with pytest.raises(httpx.HTTPStatusError, match="409"):
            await publish(server, room, "blue")
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (await c.head(f"/whep/{room}?rendition=nope")).status_code == 404
            assert (await c.head(f"/whep/{room}?anchor=nope")).status_code == 404
            assert (await c.head(f"/whep/{room}?rendition=low")).status_code == 200
        await b.close()
        await a.close()


@pytest.mark.timeout(90)
async def test_mixer_encodes_in_the_programs_codec() -> None:
    """A VP8 program stays VP8 for its viewers when an H264 co-host joins; once that co-host is
    alone it cannot pass through, so the mixer keeps running for it."""
    with run_server(stage=SMALL_STAGE) as server:
        room = "vp8stage"
        gw = server.gateway
        a = await publish(server, room, "red", video_codec="VP8")
        assert await wait_for(lambda: gw.stages.live_hub(room) is not None, 10)
        hub = gw.stages.live_hub(room)
        assert hub is not None and hub.codecs["video"].name == "VP8"
        viewer = await watch_program(server.base_url, f"/whep/{room}")
        assert await shows(viewer, {(0.5, 0.5): "red"}, 15)
        b = await publish(server, room, "green", video_codec="H264")
        b_session = gw.anchors.in_room(room)[-1]
        assert b_session.hub.codecs["video"].name == "H264"
        assert await shows(viewer, {(0.25, 0.5): "red", (0.75, 0.5): "green"}, 15)
        await a.close()
        assert await shows(viewer, {(0.5, 0.5): "green", (0.1, 0.1): "green"}, 15)
        assert mode(server, room) == "mixed" and gw.stages.live_hub(room) is hub
        assert hub.codecs["video"].name == "VP8" and not viewer.ended.is_set()
        await viewer.close()
        await b.close()
        assert await wait_for(lambda: not gw.anchors.sessions, 10)
