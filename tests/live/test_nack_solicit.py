"""Holes made so that an aiortc viewer NACKs again, with real peers over a real uvicorn: an aiortc
WHEP viewer (its own NackGenerator and jitter buffer) loses 4 % of its incoming RTP and half of
the NACKs it sends (a lossy link at the edge, both ways). The gateway makes a hole every 0.1 s
while it asks for repairs; aiortc answers them with its missing list (lost NACKs repeated), the
fillers never hold its jitter buffer, and its picture keeps coming. A clean viewer of the same
room gets no hole at all."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from tests.live.test_live_path import wait_for
from tests.live.test_resilience import lossy_link
from tests.support.server import run_server

NACK = 205  # RTCP RTPFB: aiortc sends each NACK as a packet of its own (in clear in SRTCP)


def lose_nacks(viewer: Any, share: float, seed: int = 2) -> dict[str, int]:
    """The viewer's ICE transport drops ``share`` of the NACKs it sends."""
    rng = random.Random(seed)
    counts = {"nacks": 0, "dropped": 0}
    ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
    inner = ice._send

    async def lossy_send(data: bytes) -> None:
        if len(data) > 8 and 128 <= data[0] < 192 and data[1] == NACK:
            counts["nacks"] += 1
            if rng.random() < share:
                counts["dropped"] += 1
                return
        await inner(data)

    ice._send = lossy_send
    return counts


@pytest.mark.timeout(90)
async def test_an_aiortc_viewer_that_loses_nacks_is_made_to_ask_again() -> None:
    limits = {"max_loop_lag": None, "max_loop_busy": None}  # a loaded machine would 503
    with run_server(limits=limits) as server:
        room = "solicit"
        pub = await whip_publish(
            server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(640, 360, 30)
        )
        clean = await whep_watch(server.base_url, room, kinds=("video",))
        bad = await whep_watch(server.base_url, room, kinds=("video",))
        try:
            assert await wait_for(lambda: len(clean.samples) > 20 and len(bad.samples) > 20, 15)
            down = lossy_link(bad, {"loss": 0.04})
            up = lose_nacks(bad, 0.5)
            b0 = len(bad.samples)
            await asyncio.sleep(6.0)
            headers = {"Authorization": f"Bearer {server.gateway.operator_key}"}
            async with httpx.AsyncClient(
                base_url=server.base_url, headers=headers, timeout=10
            ) as c:
                rows = (await c.get(f"/v1/rooms/{room}/viewers")).json()["viewers"]
            by_made = sorted(rows, key=lambda r: r["nack_solicits"])
            quiet, lossy = by_made[0], by_made[-1]
            assert down["dropped"] > 20 and up["dropped"] > 3, (down, up)
            assert quiet["nack_solicits"] == 0 and quiet["nacked_packets"] == 0, quiet
            # ~10 holes a second while it asks (6 s, from its first NACK on)
            assert lossy["nack_solicits"] >= 20, lossy
            # aiortc answered them: its missing list came with the holes made
            assert lossy["solicited_nacks"] >= 0.5 * lossy["nack_solicits"], lossy
            assert not lossy["asks_again"], lossy  # still a viewer that asks once
            assert lossy["retransmissions"] >= 0.8 * down["dropped"] - 5, (lossy, down)
            # the fillers never held its jitter buffer: the picture kept coming
            assert len(bad.samples) - b0 >= 60, len(bad.samples) - b0
        finally:
            await clean.close()
            await bad.close()
            await pub.close()


async def counters(server: Any, room: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.gateway.operator_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as c:
        (row,) = (await c.get(f"/v1/rooms/{room}/viewers")).json()["viewers"]
    return dict(row)


@pytest.mark.timeout(90)
async def test_a_viewer_that_loses_much_gets_a_hole_every_frame() -> None:
    """With ``media.viewer_nack_solicit_lossy_s = 0``, at 8 % loss (3 % or more: its
    retransmissions go twice too) the holes come in every frame, not every 0.1 s, so a lost NACK
    costs a frame and a round trip (with 0.1, the default, every third or fourth frame: this
    test fails then)."""
    limits = {"max_loop_lag": None, "max_loop_busy": None}  # a loaded machine would 503
    lossy = {"viewer_nack_solicit_lossy_s": 0.0}  # off by default (BENCHMARKS.md, a-loss4)
    with run_server(limits=limits, media=lossy) as server:
        room = "solicit-lossy"
        # grain: a stream of ~100 packets a second (a plain test card makes a few dozen, and its
        # loss share over a second swings across 3 % at 8 % loss)
        video = StampedVideoTrack(640, 360, 30, grain=4)
        pub = await whip_publish(server.base_url, room, server.anchor_token(room), video=video)
        bad = await whep_watch(server.base_url, room, kinds=("video",))
        try:
            assert await wait_for(lambda: len(bad.samples) > 20, 15)
            down = lossy_link(bad, {"loss": 0.08})
            await asyncio.sleep(2.0)  # its loss share over a window of 1 s is known
            before, b0 = await counters(server, room), len(bad.samples)
            await asyncio.sleep(5.0)
            after = await counters(server, room)
            frames = after["frames_sent"] - before["frames_sent"]
            made = after["nack_solicits"] - before["nack_solicits"]
            assert down["dropped"] > 20, down
            # at 15 fps or less every 0.1 s would be every other frame or more: nothing to tell
            assert frames >= 75, frames
            seen = {k: v for k, v in after.items() if "nack" in k or "rtx" in k or "loss" in k}
            assert made >= 0.75 * frames, (made, frames, seen)
            assert after["solicited_nacks"] >= 0.5 * after["nack_solicits"], after
            assert len(bad.samples) - b0 >= 50, len(bad.samples) - b0  # the picture kept coming
        finally:
            await bad.close()
            await pub.close()
