"""Simulcast ingest end to end: headless Chromium publishes three layers (q/h/f at 1/4, 1/2 and
full size) from the publish page; aiortc viewers pull the program and each lower rendition and
decode a picture of each; a layer the browser stops moves its viewers down and back. Plus the
simulcast offers the gateway refuses, as problem+json over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import av
import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, offer_answer, whip_publish
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.live.test_browser import chromium, open_page, until
from tests.support.live_bed import assert_4xx_problem
from tests.support.offers import fixture
from tests.support.server import RunningServer, run_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@asynccontextmanager
async def pull(base: str, path: str) -> AsyncIterator[Any]:
    """A WHEP viewer of ``/whep/{path}`` (query included) whose video track decodes."""
    pc = RTCPeerConnection(rtc_configuration(()))
    client = httpx.AsyncClient(base_url=base, timeout=10)
    try:
        video = pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await offer_answer(pc, client, f"/whep/{path}", {})
        yield video.receiver.track
    finally:
        await close_quietly(pc)
        await client.aclose()


async def picture(track: Any, timeout: float = 10.0) -> tuple[int, int]:
    frame = await asyncio.wait_for(track.recv(), timeout)
    assert isinstance(frame, av.VideoFrame)
    return frame.width, frame.height


async def picture_of_height(track: Any, height: int, seconds: float) -> tuple[int, int]:
    """The first decoded picture ``height`` high within ``seconds`` (a browser short of CPU may
    drop or shrink a layer for a moment: its viewers are then on another one), else the last."""
    deadline = time.monotonic() + seconds
    size = await picture(track)
    while size[1] != height and time.monotonic() < deadline:
        size = await picture(track)
    return size


def stream(server: RunningServer, room: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{server.base_url}/v1/rooms/{room}/stream",
        headers={"Authorization": f"Bearer {server.gateway.operator_key}"},
        timeout=5,
    )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


async def live_layers(server: RunningServer, room: str, count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    layers: list[Any] = []
    while time.monotonic() < deadline:
        layers = stream(server, room)["layers"]
        if sum(1 for layer in layers if layer["live"]) >= count:
            return layers
        await asyncio.sleep(0.25)
    raise AssertionError(f"{count} live layers expected: {layers}")


async def set_active(page: Any, rid: str, active: bool) -> None:
    await page.evaluate(
        """async ([rid, active]) => {
            const sender = window.stagecast.pc.getSenders().find(
                (s) => s.track && s.track.kind === 'video');
            const p = sender.getParameters();
            for (const e of p.encodings) if (e.rid === rid) e.active = active;
            await sender.setParameters(p);
        }""",
        [rid, active],
    )


@pytest.mark.timeout(120)
async def test_chromium_simulcast_layers_are_renditions_and_a_stopped_layer_moves_viewers() -> None:
    room = "simulcast"
    # the browser's three encoders and this test share 2 loaded cores: no lag-based refusals
    with run_server(media={"anchor_start_kbps": 2500}, limits={"max_loop_lag": None}) as server:
        base = server.base_url
        token = server.anchor_token(room)
        async with chromium(fake_media=True) as browser:
            pub = await open_page(browser, f"{base}/publish?room={room}&quality=720#token={token}")
            await until(
                pub, "window.stagecast.stream && !document.querySelector('#go').disabled", 10
            )
            assert await pub.is_checked("#simulcast")  # on by default for the camera
            await pub.click("#go")
            await until(pub, "window.stagecast.state === 'live'", 15, "the anchor going live")
            offer = await pub.evaluate("window.stagecast.pc.localDescription.sdp")
            assert "a=simulcast:send q;h;f" in offer
            answer = await pub.evaluate("window.stagecast.pc.remoteDescription.sdp")
            assert "a=simulcast:recv q;h;f" in answer and "rtp-stream-id" in answer

            layers = await live_layers(server, room, 3, 30)
            assert [layer["name"] for layer in layers] == ["720p", "360p", "180p"]
            assert [layer["rid"] for layer in layers] == ["f", "h", "q"]
            heights = [layer["height"] for layer in layers]
            assert heights[0] > heights[1] > heights[2] > 0, layers
            print("layers:", layers)

            anchor_id = next(iter(server.gateway.anchors.sessions))
            paths = {
                "program": room,
                "360p": f"{room}?rendition=360p",
                "180p": f"{room}?rendition=180p",
                "anchor 180p": f"{room}?anchor={anchor_id}&rendition=180p",
            }
            sizes: dict[str, tuple[int, int]] = {}
            expected = {"program": heights[0], "360p": heights[1], "180p": heights[2]}
            for what, path in paths.items():
                async with pull(base, path) as track:
                    want = expected.get(what, heights[2])
                    sizes[what] = await picture_of_height(track, want, 6)
            print("decoded:", sizes, "layers then:", stream(server, room)["layers"])
            assert sizes["program"][1] == heights[0]
            assert sizes["360p"][1] == heights[1]
            assert sizes["180p"][1] == heights[2] == sizes["anchor 180p"][1]

            # The browser stops a layer (as it drops its top one under CPU or bandwidth limits):
            # its viewers get the next layer down within a second or so, and their own when it
            # is back. The top layer if Chromium sends it now (on this loaded machine its
            # estimate from aiortc's REMB often pauses f by itself), else the middle one.
            view = await live_layers(server, room, 2, 20)
            top = 0 if view[0]["live"] else 1
            rid, name, below = view[top]["rid"], view[top]["name"], view[top + 1]["name"]
            path = room if top == 0 else f"{room}?rendition={name}"
            async with pull(base, path) as track:
                assert (await picture_of_height(track, heights[top], 10))[1] == heights[top]
                t0 = time.monotonic()
                await set_active(pub, rid, False)
                while (await picture(track))[1] != heights[top + 1]:
                    assert time.monotonic() - t0 < 3, f"{name} did not move down to {below}"
                moved = time.monotonic() - t0
                view = stream(server, room)["layers"]
                assert not view[top]["live"], view
                assert {name, below} <= set(view[top + 1]["carried_by"]), view
                await set_active(pub, rid, True)
                t1 = time.monotonic()  # Chromium resumes a layer when its estimate allows
                while not stream(server, room)["layers"][top]["live"]:
                    assert time.monotonic() - t1 < 20, f"Chromium did not resume {rid}"
                    await asyncio.sleep(0.05)
                t2 = time.monotonic()
                while (await picture(track))[1] != heights[top]:
                    assert time.monotonic() - t2 < 2, f"{name} did not come back to its layer"
                back = time.monotonic() - t2
                print(
                    f"layer {rid} stopped: its viewers moved down in {moved:.2f} s, "
                    f"back in {back:.2f} s once it was live again "
                    f"({t2 - t1:.2f} s after it was resumed)"
                )
                assert moved < 1.5

            # A co-host joins: the room is mixed; the 180p rendition, which the mixer does not
            # make, carries its lowest (360p), encoded because someone watches it there.
            cohost = await whip_publish(
                base,
                room,
                server.gateway.tokens.mint(room, "anchor", "cohost", 600),
                video=StampedVideoTrack(640, 360, 30),
                audio=ToneAudioTrack(440),
                video_codec="H264",
            )
            try:
                director = server.gateway.rooms.rooms[room].director
                deadline = time.monotonic() + 10
                while director.mode != "mixed":
                    assert time.monotonic() < deadline, director.mode
                    await asyncio.sleep(0.1)
                async with pull(base, f"{room}?rendition=180p") as track:
                    assert await picture_of_height(track, 360, 15) == (640, 360)
            finally:
                await cohost.close()


BAD_SIMULCAST = {
    "unknown rid": ("a=simulcast:send q;h;f", "a=simulcast:send q;h;x", 400),
    "duplicate rid": ("a=rid:h send", "a=rid:q send", 400),
    "four layers": (
        "a=simulcast:send q;h;f",
        "a=rid:g send\r\na=simulcast:send q;h;f;g",
        422,
    ),
    "rid syntax": ("a=rid:q send", "a=rid:q! send", 400),
    "no rtp-stream-id extension": (
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
        "",
        422,
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(BAD_SIMULCAST))
def test_bad_simulcast_offers_get_a_problem(server: RunningServer, case: str) -> None:
    old, new, status = BAD_SIMULCAST[case]
    offer = fixture("chromium_simulcast.sdp")
    assert old in offer
    resp = httpx.post(
        f"{server.base_url}/whip/badsim",
        content=offer.replace(old, new, 1),
        headers={
            "Authorization": f"Bearer {server.anchor_token('badsim')}",
            "Content-Type": "application/sdp",
        },
        timeout=10,
    )
    assert resp.status_code == status, resp.text
    assert_4xx_problem(resp, case)
    assert not server.gateway.anchors.sessions


RENDITIONS = [
    {"name": "720p", "width": 1280, "height": 720, "video_bitrate_kbps": 2000},
    {"name": "360p", "width": 640, "height": 360, "video_bitrate_kbps": 600},
    {"name": "180p", "width": 320, "height": 180, "video_bitrate_kbps": 200},
]


@pytest.mark.timeout(60)
async def test_transcode_ladder_gives_a_single_stream_anchor_lower_renditions() -> None:
    """``stage.transcode_ladder``: a lone anchor without simulcast is passed through as the
    program while its lower renditions are encoded from it (decoded once)."""
    room = "ladder"
    stage = {"transcode_ladder": True, "renditions": RENDITIONS}
    with run_server(stage=stage, limits={"max_loop_lag": None}) as server:
        base = server.base_url
        anchor = await whip_publish(
            base,
            room,
            server.anchor_token(room),
            video=StampedVideoTrack(1280, 720, 30),
            audio=ToneAudioTrack(440),
            video_codec="H264",
        )
        try:
            sizes = {}
            for name, path in (
                ("720p", room),
                *((n, f"{room}?rendition={n}") for n in ("360p", "180p")),
            ):
                async with pull(base, path) as track:
                    sizes[name] = await picture(track, 15)
            print("ladder:", sizes)
            assert sizes == {"720p": (1280, 720), "360p": (640, 360), "180p": (320, 180)}
            director = server.gateway.rooms.rooms[room].director
            assert director.mode == "passthrough" and director.ladder is not None
        finally:
            await anchor.close()
