"""A viewer's layer pin: ``?layer=NAME`` at the POST, then changed live through the WHEP
session's ``/layer`` resource (the viewer's own token or the operator's key) and the operator
API; the viewer moves on the same connection, at the target layer's keyframe, and keeps
getting pictures. The API shows its layer, auto or pinned and its switches; /metrics counts
them."""

from __future__ import annotations

import httpx
import pytest

from tests.live.test_live_path import wait_for
from tests.live.test_mixer_live import SMALL_STAGE, mode, publish
from tests.support.mixer_clients import watch_program
from tests.support.server import run_server


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_pin_a_layer_at_join_and_change_it_live() -> None:
    # the machine is shared: admission by loop lag would measure it, not the pins
    with run_server(stage=SMALL_STAGE, limits={"max_loop_lag": 5.0}) as server:
        room = "pins"
        red = await publish(server, room, "red")
        green = await publish(server, room, "green")
        viewer = None
        headers = {"X-API-Key": server.gateway.operator_key}
        try:
            assert await wait_for(lambda: mode(server, room) == "mixed", 10)
            viewer = await watch_program(
                server.base_url, f"/whep/{room}?layer=low", kinds=("video",)
            )
            (session,) = server.gateway.viewers.sessions.values()
            hubs = server.gateway.stages.get(room).renditions  # type: ignore[union-attr]

            def width() -> int | None:
                pic = viewer.picture if viewer is not None else None
                return None if pic is None else int(pic.shape[1])

            assert session.hub is hubs["low"] and session.pin == "low"
            assert await wait_for(lambda: width() == 160, 15)
            assert await wait_for(lambda: session.layer == "low", 5)  # its selector's first look
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
                listed = await http.get(f"/v1/rooms/{room}/viewers", headers=headers)
                (view,) = listed.json()["viewers"]
                assert (view["layer"], view["layer_mode"]) == ("low", "pinned")
                # the viewer itself (anonymous audience: the room is public) pins main
                url = f"{viewer.location}/layer"
                r = await http.put(url, json={"layer": "main"})
                assert r.status_code == 200, r.text
                assert await wait_for(lambda: session.hub is hubs["main"], 5)
                assert await wait_for(lambda: width() == 320, 10)
                frames = viewer.video_frames
                assert await wait_for(lambda: viewer.video_frames > frames + 10, 10)
                r = await http.put(url, json={"layer": "nope"})
                assert r.status_code == 422
                # the operator lets it adapt again
                r = await http.put(
                    f"/v1/rooms/{room}/viewers/{session.id}/layer",
                    json={"layer": "auto"},
                    headers=headers,
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert (body["layer"], body["layer_mode"]) == ("main", "auto")
                assert body["layer_switches_up"] == 1
                metrics = (await http.get("/metrics", headers=headers)).text
                assert 'stagecast_viewer_layer_switches_total{direction="up"} 1.0' in metrics
        finally:
            if viewer is not None:
                await viewer.close()
            await red.close()
            await green.close()
