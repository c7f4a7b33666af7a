"""/metrics is not public: it names every room, private ones included. It takes its own Bearer
credential (``metrics.token``) or the operator key, and can leave room names out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from tests.support.server import run_server

SCRAPE = "scrape-token-0123456789abcdef"


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


@pytest.mark.timeout(30)
async def test_metrics_need_the_scrape_token_or_the_operator_key() -> None:
    with run_server(metrics={"token": SCRAPE}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            anon = await c.get("/metrics")
            assert anon.status_code == 401
            assert anon.headers["content-type"].startswith("application/problem+json")
            assert "stagecast_" not in anon.text
            wrong = await c.get("/metrics", headers={"Authorization": "Bearer " + "x" * 30})
            assert wrong.status_code == 401
            audience = server.audience_token("any")  # a viewer's token is no scrape credential
            assert (
                await c.get("/metrics", headers={"Authorization": f"Bearer {audience}"})
            ).status_code == 401
            for headers in (
                {"Authorization": f"Bearer {SCRAPE}"},  # Prometheus: authorization.credentials
                {"Authorization": f"Bearer {server.gateway.operator_key}"},
                {"X-API-Key": server.gateway.operator_key},
            ):
                ok = await c.get("/metrics", headers=headers)
                assert ok.status_code == 200, headers
                assert "stagecast_rooms" in ok.text
    with run_server() as server:  # no scrape token configured: the operator key only
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            assert (await c.get("/metrics")).status_code == 401
            op = {"Authorization": f"Bearer {server.gateway.operator_key}"}
            assert (await c.get("/metrics", headers=op)).status_code == 200


@pytest.mark.timeout(60)
async def test_metrics_without_room_labels_name_no_room() -> None:
    with run_server(metrics={"token": SCRAPE, "room_labels": False}) as server:
        room = "hidden-room-name"
        op = {"Authorization": f"Bearer {server.gateway.operator_key}"}
        scrape = {"Authorization": f"Bearer {SCRAPE}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            created = await c.post("/v1/rooms", json={"name": room, "private": True}, headers=op)
            assert created.status_code == 201
            pub = await whip_publish(
                server.base_url,
                room,
                server.anchor_token(room),
                video=StampedVideoTrack(160, 96, 15),
            )
            viewer = await whep_watch(
                server.base_url, room, server.audience_token(room), kinds=("video",), decode=False
            )
            try:
                assert await wait_until(lambda: viewer.video_frames > 5, 10)
                text = (await c.get("/metrics", headers=scrape)).text
                assert room not in text
                assert "room=" not in text
                viewers = [ln for ln in text.splitlines() if ln.startswith("stagecast_viewers ")]
                assert viewers and float(viewers[0].split()[1]) == 1.0, viewers
                assert any(
                    ln.startswith("stagecast_fanout_cpu_seconds") for ln in text.splitlines()
                )
            finally:
                await viewer.close()
                await pub.close()
