"""An edge from relay alone (``python -m relay``, gateway unimportable) pulling the program and
one anchor's own stream by their keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.launcher import free_port, free_udp_port, stop_process
from gateway.synthetic import StampedVideoTrack, Viewer, whep_watch, whip_publish
from tests.support.server import SECRET, run_server

OPERATOR = "edge-operator-key-0123456789"

# ``python -m relay`` with every gateway import made to fail
WITHOUT_GATEWAY = (
    "import runpy, sys; sys.modules['gateway'] = None; "
    "runpy.run_module('relay', run_name='__main__', alter_sys=True)"
)


def start_edge(upstream: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": OPERATOR,  # /cluster and /metrics take it
        "STAGECAST_LOG_LEVEL": "warning",
    }
    env.pop("STAGECAST_CONFIG", None)
    cmd = [sys.executable, "-c", WITHOUT_GATEWAY, "--upstream", upstream]
    cmd += ["--port", str(port), "--node-id", "lone-edge", "--udp-port", str(free_udp_port())]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_up(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the edge exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the edge did not start: {log.read_text()[-3000:]}")


async def frames_arrive(viewer: Viewer, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(viewer.samples) >= count:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.timeout(120)
async def test_python_m_relay_runs_an_edge_without_gateway(tmp_path: Path) -> None:
    room = "lone"
    with run_server() as origin:
        pub = await whip_publish(
            origin.base_url,
            room,
            origin.anchor_token(room),
            video=StampedVideoTrack(320, 180, 20),
        )
        anchor_id = pub.location.rsplit("/", 1)[1]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "edge.log"
        proc = start_edge(origin.base_url, port, log)
        viewers: list[Viewer] = []
        try:
            await asyncio.to_thread(wait_up, proc, url, log)
            viewers.append(await whep_watch(url, room, kinds=("video",)))
            viewers.append(await whep_watch(url, f"{room}?anchor={anchor_id}", kinds=("video",)))
            for v in viewers:
                assert await frames_arrive(v, 10, 20), log.read_text()[-3000:]
            op = {"X-API-Key": OPERATOR}
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                view = (await http.get("/cluster", headers=op)).json()
                # one pull per key, each asking the origin for its stream with the key's query
                assert sorted(view["pulls"]) == [room, f"{room}?anchor={anchor_id}"]
                ready = await http.get("/readyz")
                assert ready.status_code == 200
                body = ready.json()
                assert 0 <= body.pop("busy") <= 1  # its loop's share of a core (a front's policy)
                assert body == {
                    "status": "ready",
                    "pulls": 1,  # rooms pulled (probes are anonymous: no names)
                    "viewers": 2,
                    "registered": True,
                }
                assert (await http.get("/metrics")).status_code == 401
                metrics = await http.get("/metrics", headers=op)
                assert metrics.headers["content-type"].startswith("text/plain")
                assert "stagecast_pulls 2.0" in metrics.text
                assert f'stagecast_viewers{{room="{room}"}} 2.0' in metrics.text
                assert "stagecast_egress_packets_total" in metrics.text
            links = [
                s.grant.subject for s in origin.gateway.viewers.sessions.values() if s.room == room
            ]
            assert links == ["node:lone-edge", "node:lone-edge"]
        finally:
            for v in viewers:
                await v.close()
            await pub.close()
            await asyncio.to_thread(stop_process, proc)
    text = log.read_text()
    assert "stagecast edge lone-edge" in text and "Traceback" not in text


def test_python_m_relay_refuses_to_start_without_an_upstream() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_GATEWAY, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2 and "--upstream" in done.stderr


def test_python_m_relay_names_the_command_for_a_config_with_origin_keys(tmp_path: Path) -> None:
    """A shared config file with the origin's keys: no traceback, the way to run it instead."""
    config = tmp_path / "shared.toml"
    config.write_text('[media]\nanchor_start_kbps = 900\n[cluster]\nupstream = "http://x:1"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_GATEWAY, "--config", str(config), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 2
    assert "anchor_start_kbps" in done.stderr and "stagecast edge" in done.stderr
    assert "Traceback" not in done.stderr
