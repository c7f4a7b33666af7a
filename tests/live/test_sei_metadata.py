"""Timed metadata in the video: an operator's POST reaches viewers at the origin and behind an
edge inside the H.264 frames themselves (SEI), from a real aiortc anchor through real peers."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.synthetic import (
    StampedVideoTrack,
    ToneAudioTrack,
    offer_answer,
    whep_watch,
    whip_publish,
)
from relay.media.sei import find_sei
from relay.rtc.adapter import install_ingest_tap
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.live.test_live_path import wait_for
from tests.support.edge_server import run_edge
from tests.support.server import run_server


class SeiWatcher:
    """A WHEP viewer that keeps the stagecast SEI payloads of every video packet it gets."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(rtc_configuration(()))
        self.packets = 0
        self.found: list[bytes] = []
        t = self.pc.addTransceiver("video", direction="recvonly")
        install_ingest_tap(t.receiver, self._packet)

    def _packet(self, packet: object, codec: object) -> None:
        self.packets += 1
        self.found += find_sei([packet.payload])  # type: ignore[attr-defined]

    async def watch(self, base_url: str, room: str) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            await offer_answer(self.pc, client, f"/whep/{room}", {})


@pytest.mark.timeout(90)
async def test_metadata_rides_in_the_frames_to_origin_and_edge_viewers() -> None:
    calm = {"max_loop_lag": None, "max_loop_busy": None}  # a loaded CI machine: no 503s
    with run_server(limits=calm) as server, run_edge(server.base_url, limits=calm) as edge:
        key = {"X-API-Key": server.gateway.operator_key}
        room, vp8_room = "sei", "sei-vp8"
        pubs = [
            await whip_publish(
                server.base_url,
                r,
                server.anchor_token(r),
                video=StampedVideoTrack(320, 180, 30),
                audio=ToneAudioTrack(440),
                video_codec=codec,
            )
            for r, codec in ((room, "H264"), (vp8_room, "VP8"))
        ]
        watchers = [SeiWatcher(), SeiWatcher()]
        try:
            await watchers[0].watch(server.base_url, room)
            await watchers[1].watch(edge.base_url, room)
            decoding = await whep_watch(server.base_url, room)  # SEI must not upset a decoder
            assert await wait_for(lambda: all(w.packets > 30 for w in watchers), 20)
            async with httpx.AsyncClient(base_url=server.base_url, headers=key) as api:
                sent = [json.dumps({"product": 42, "text": "限时 9.9"}), "quiz:3"]
                for data in sent:
                    resp = await api.post(f"/v1/rooms/{room}/metadata", json={"data": data})
                    assert resp.status_code == 202, resp.text
                    assert resp.json()["renditions"] == ["main"] or resp.json()["renditions"]
                expected = [s.encode() for s in sent]
                assert await wait_for(lambda: all(w.found == expected for w in watchers), 10), [
                    w.found for w in watchers
                ]
                # bad input: a VP8 program has no SEI, a room that is not live, an empty body
                vp8 = await api.post(f"/v1/rooms/{vp8_room}/metadata", json={"data": "x"})
                assert vp8.status_code == 409, vp8.text
                assert vp8.headers["content-type"] == "application/problem+json"
                gone = await api.post("/v1/rooms/nobody/metadata", json={"data": "x"})
                assert gone.status_code == 404
                empty = await api.post(f"/v1/rooms/{room}/metadata", json={"data": ""})
                assert empty.status_code in (400, 422)
                big = await api.post(f"/v1/rooms/{room}/metadata", json={"data": "é" * 600})
                assert big.status_code == 422
                no_key = await httpx.AsyncClient(base_url=server.base_url).post(
                    f"/v1/rooms/{room}/metadata", json={"data": "x"}
                )
                assert no_key.status_code == 401
            frames = decoding.video_frames
            await asyncio.sleep(0.5)
            assert all(w.found == expected for w in watchers)  # once each, no repeats
            assert decoding.video_frames > frames + 5 and len(decoding.samples) > 20
            await decoding.close()
        finally:
            for w in watchers:
                await close_quietly(w.pc)
            for p in pubs:
                with contextlib.suppress(Exception):
                    await p.close()
