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
from aiortc import RTCPeerConnection
from fastapi import FastAPI

from gateway.settings import AuthSettings, ClusterSettings, Settings
from gateway.synthetic import Publisher, SolidColourTrack, ToneAudioTrack, whip_publish
from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.cluster.registry import NodeRecord
from relay.http.problems import install_problem_handlers
from relay.http.whep import whep_router
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.rtc.viewers import ViewerService
from relay.server.edge import build_edge_node, create_edge_app
from tests.live.test_live_path import wait_for
from tests.support.mixer_clients import RGB, ProgramViewer, watch_program
from tests.support.server import SECRET, RunningServer, run_server
from tests.support.stage_guest import watch_admitted

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
        video=SolidColourTrack(RGB[colour]),
        audio=ToneAudioTrack(TONES[colour], amplitude=0.25),
        **kw,  # type: ignore[arg-type]
    )


def mode(server: RunningServer, room: str) -> str:
    d = server.gateway.rooms.directors.get(room)
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


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_stage_goes_from_one_to_three_anchors_and_back_without_renegotiation() -> None:
    with run_server(stage=SMALL_STAGE) as server:
        room = "costage"
        gw = server.gateway
        a = await publish(server, room, "red")
        assert await wait_for(lambda: gw.stages.live_hub(room) is not None, 10)
        viewer = await watch_admitted(server.base_url, f"/whep/{room}")
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
        low = await watch_admitted(server.base_url, f"/whep/{room}?rendition=low")
        assert await shows(low, {(0.25, 0.5): "red", (0.75, 0.5): "green"}, 15)
        assert low.picture.shape[:2] == (90, 160)
        # each anchor's own stream can be pulled by a co-host
        a_id = gw.stages.get(room).anchor_ids[0]  # type: ignore[union-attr]
        pull = await watch_admitted(server.base_url, f"/whep/{room}?anchor={a_id}")
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


def anchor_id(publisher: Publisher) -> str:
    return str(publisher.location).rstrip("/").rsplit("/", 1)[-1]


async def audio_offer() -> str:
    """A recvonly audio offer, for requests that are refused before any session exists."""
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await close_quietly(pc)


@pytest.mark.timeout(120)
async def test_mixminus_gives_each_anchor_everyone_else() -> None:
    """Three anchors with distinct tones: A's mix-minus (pulled over WHEP with A's own token)
    carries B's and C's tones and not A's; the operator's mute applies to it; nobody else may
    pull it."""
    with run_server(stage=SMALL_STAGE) as server:
        room = "mixminus"
        gw = server.gateway
        a = await publish(server, room, "red")
        b = await publish(server, room, "green")
        c = await publish(server, room, "blue")
        assert await wait_for(lambda: mode(server, room) == "mixed", 10)
        a_id, b_id = anchor_id(a), anchor_id(b)
        a_token = gw.tokens.mint(room, "anchor", "anchor-red", 600)  # A's subject
        path = f"/whep/{room}?mixminus={a_id}"

        offer = await audio_offer()
        sdp = {"Content-Type": "application/sdp"}

        def bearer(token: str) -> dict[str, str]:
            return {**sdp, "Authorization": f"Bearer {token}"}

        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            assert (await http.head(path)).status_code == 401  # HEAD needs what POST needs
            assert (await http.head(path, headers=bearer(a_token))).status_code == 200
            nobody = f"/whep/{room}?mixminus=nobody"
            assert (await http.head(nobody, headers=bearer(a_token))).status_code == 404
            # anonymous audience, an audience token, another anchor's token: refused
            assert (await http.post(path, content=offer, headers=sdp)).status_code == 401
            audience = server.audience_token(room)
            r = await http.post(path, content=offer, headers=bearer(audience))
            assert r.status_code == 403, r.text
            b_token = gw.tokens.mint(room, "anchor", "anchor-green", 600)
            r = await http.post(path, content=offer, headers=bearer(b_token))
            assert r.status_code == 403 and "own anchor" in r.text, r.text
            other_room = gw.tokens.mint("elsewhere", "anchor", "anchor-red", 600)
            r = await http.post(path, content=offer, headers=bearer(other_room))
            assert r.status_code == 403, r.text
            r = await http.post(
                f"/whep/{room}?mixminus=nobody", content=offer, headers=bearer(a_token)
            )
            assert r.status_code == 404
            r = await http.post(f"{path}&rendition=low", content=offer, headers=bearer(a_token))
            assert r.status_code == 400

        t0 = time.monotonic()
        minus = await watch_program(server.base_url, path, token=a_token, kinds=("audio",))
        levels = await hears(
            minus, lambda lv: lv[440.0] < 0.05 and lv[1000.0] > 0.3 and lv[2500.0] > 0.3, 15
        )
        print(f"A's mix-minus {levels} after {time.monotonic() - t0:.2f} s")
        director = gw.rooms.directors[room]
        assert set(director.mixminus) == {a_id, b_id, anchor_id(c)}
        assert director.mixminus[a_id].viewer_count == 1
        # only the listened-to feed is encoded: B's and C's have nobody
        assert all(director.mixminus[x].stats.frames_in == 0 for x in (b_id, anchor_id(c)))

        headers = {"X-API-Key": gw.operator_key}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as api:
            prog = (await api.get(f"/v1/rooms/{room}/program")).json()
            assert prog["mixminus_listeners"][a_id] == 1 and prog["mixer_mixminus_frames"] > 0
            # the operator's mute applies to the mix-minus too
            r = await api.post(f"/v1/rooms/{room}/anchors/{b_id}/audio", json={"muted": True})
            assert r.status_code == 200
            await hears(minus, lambda lv: lv[1000.0] < 0.05 and lv[440.0] < 0.05, 10)

        # A leaves: its mix-minus ends for its listener
        await a.close()
        assert await wait_for(minus.ended.is_set, 10)
        r = await minus.client.delete(minus.location)
        assert r.status_code in (200, 404)
        await minus.close()

        # DELETE of a mix-minus session takes the anchor token that opened it
        b_minus = await watch_program(
            server.base_url, f"/whep/{room}?mixminus={b_id}", token=b_token, kinds=("audio",)
        )
        await hears(b_minus, lambda lv: lv[2500.0] > 0.5 and lv[1000.0] < 0.05, 15)
        r = await b_minus.client.delete(b_minus.location)
        assert r.status_code == 200, r.text
        await b_minus.close()
        await b.close()
        await c.close()
        assert await wait_for(lambda: not gw.anchors.sessions, 10)


@pytest.mark.timeout(30)
async def test_mixminus_is_served_by_the_origin_only() -> None:
    """The origin's 307 routing to edges leaves mix-minus pulls alone (only the origin has the
    anchors); a WHEP router without mix-minus answers 404 to one, and a relay redirects it to its
    upstream."""
    with run_server() as server:
        cluster = server.gateway.cluster
        assert cluster is not None
        spare = NodeRecord(
            id="spare", url="http://spare:8080", role="edge", viewers=3, max_viewers=100
        )

        async def seed() -> None:
            await cluster.registry.heartbeat(spare, ttl=30)
            cluster.view = await cluster.registry.nodes()

        asyncio.run_coroutine_threadsafe(seed(), server.loop).result(5)
        offer = {"Content-Type": "application/sdp"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            tok = server.audience_token("r")
            r = await http.post(f"/whep/r?access_token={tok}", content="v=0", headers=offer)
            assert r.status_code == 307  # a viewer goes to the edge...
            r = await http.post("/whep/r?mixminus=x", content="v=0", headers=offer)
            assert r.status_code == 401  # ... a mix-minus pull stays (and needs a token)

    tokens = TokenAuthority(SECRET)
    edge_app = FastAPI()
    install_problem_handlers(edge_app)
    nothing = ViewerService(lambda key, subject: None)
    edge_app.include_router(whep_router(nothing, AccessPolicy(tokens)))
    transport = httpx.ASGITransport(app=edge_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
        bearer = {"Authorization": f"Bearer {tokens.mint('r', 'anchor', 'a', 60)}", **offer}
        r = await http.post("/whep/r?mixminus=x", content="v=0", headers=bearer)
        assert r.status_code == 404 and "origin" in r.text
        assert (await http.head("/whep/r?mixminus=x", headers=bearer)).status_code == 404

    # a relay process sends a mix-minus pull up its tree, query and all (the origin serves it)
    settings = Settings(
        auth=AuthSettings(token_secret=SECRET),
        cluster=ClusterSettings(role="edge", upstream="http://origin.test:8080/"),
    )
    relay = create_edge_app(build_edge_node(settings))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=relay), base_url="http://edge"
    ) as http:
        r = await http.post("/whep/r?mixminus=x&access_token=t", content="v=0", headers=offer)
        assert r.status_code == 307
        assert r.headers["location"] == "http://origin.test:8080/whep/r?mixminus=x&access_token=t"
        r = await http.head("/whep/r?mixminus=x")
        assert r.status_code == 307
        r = await http.post("/whep/bad room?mixminus=x", content="v=0", headers=offer)
        assert 400 <= r.status_code < 500  # a bad room name is refused, not redirected
