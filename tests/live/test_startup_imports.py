"""What a node loads at startup: a node that does not mix imports neither numpy (the mixer
loads it once a room mixes) nor the Redis client (only with ``cluster.redis_url``): ~21 MB of
resident memory a single node or an edge never uses. An origin does not load httpx either (with
click, rich and pygments, which httpx's command line brings: ~4.6 MB) until it calls out: an
edge pull, presence upstream, a webhook. Neither loads PyAV (FFmpeg's libraries, ~25 MB) until
something decodes or encodes, nor dnspython (~5 MB, aioice's mDNS) until a peer offers a
``.local`` candidate: aiortc and aioice get stand-ins (relay/rtc/deferred_imports.py), and
``test_aiortc_defers_pyav`` fails if an upgrade stops working with them. A node served by our
CLI (``test_serving_node_loads_optional_modules_on_first_use``, the process itself, with one
anchor) neither loads uvicorn's command line, psutil, the WebSocket library, pydantic 1,
ffmpeg-python nor the bridges' machinery, and runs no libuv thread pool, until a feature needs
them; ``test_uvicorn_cli_and_pydantic_v1_stand_ins`` pins the stand-ins that make it so."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.launcher import free_port, free_udp_port, wait_healthy
from relay.auth.tokens import TokenAuthority

PROBE = """
import json, sys
from gateway.settings import Settings
settings = Settings(cluster={CLUSTER})
if settings.cluster.role == "edge":
    from relay.server.edge import build_edge_node
    build_edge_node(settings)
else:
    from gateway.app import build_gateway, create_app
    create_app(settings, build_gateway(settings))
names = ("numpy", "redis", "aiortc", "httpx", "av", "dns")
print(json.dumps({name: name in sys.modules for name in names}))
"""


def _last_json(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    loaded: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("cluster", "httpx"),
    [({}, False), ({"role": "edge", "upstream": "http://127.0.0.1:9"}, True)],
    ids=["origin", "edge"],
)
def test_node_starts_without_numpy_redis_or_pyav(cluster: dict[str, str], httpx: bool) -> None:
    loaded = _last_json(PROBE.replace("{CLUSTER}", repr(cluster)))
    assert loaded == {
        "numpy": False,
        "redis": False,
        "aiortc": True,
        "httpx": httpx,
        "av": False,
        "dns": False,
    }


DEFERRAL = """
import asyncio, json, sys
import relay  # installs the deferral, as every node process does
import aiortc
from aiortc import mediastreams, rtcrtpreceiver, rtcrtpsender
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

result = {"after_import": "av" in sys.modules, "dns_after_import": "dns" in sys.modules}
from aioice import ice
result["ip_is_mdns"] = ice.mdns.is_mdns_hostname("192.0.2.1")  # must not load dnspython
result["dns_after_ip"] = "dns" in sys.modules
result["local_is_mdns"] = ice.mdns.is_mdns_hostname("0a1b2c3d-4e5f.local")  # loads it
import aioice.mdns
result["mdns_real"] = ice.mdns.create_mdns_protocol is aioice.mdns.create_mdns_protocol
result["not_a_frame"] = isinstance(object(), rtcrtpsender.Frame)  # must not load PyAV
result["after_isinstance"] = "av" in sys.modules
codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)

async def main():
    frame = await mediastreams.VideoStreamTrack().recv()  # loads PyAV: AudioFrame/VideoFrame
    result["video_is_frame"] = isinstance(frame, rtcrtpsender.Frame)
    result["video_is_audio"] = isinstance(frame, rtcrtpsender.AudioFrame)
    payloads, _ = get_encoder(codec).encode(frame, True)
    data = b"".join(vp8_depayload(p) for p in payloads)
    decoded = get_decoder(codec).decode(JitterFrame(data=data, timestamp=0))
    result["decoded"] = [(f.width, f.height) for f in decoded]
    try:  # aiortc's decoder thread catches av.FFmpegError: the stub must give the real class
        get_decoder(codec).decode(JitterFrame(data=b"\\x00" * 8, timestamp=0))
        result["bad_data"] = "decoded"
    except rtcrtpreceiver.av.FFmpegError:
        result["bad_data"] = "FFmpegError"
    import av
    result["real_av"] = type(frame) is av.VideoFrame and av.VideoFrame is not rtcrtpsender.Frame

asyncio.run(main())
print(json.dumps(result))
"""


@pytest.mark.timeout(60)
def test_aiortc_defers_pyav() -> None:
    """aiortc imports without PyAV and aioice without dnspython; aiortc's encoders, decoders,
    tracks and isinstance checks work with the real PyAV once something needs it, aioice's
    mDNS check answers an address without dnspython and a ``.local`` name with it. Fails if an
    upgrade uses them while its modules execute (the stand-in would load them) or binds them
    in a way the stand-ins miss."""
    result = _last_json(DEFERRAL)
    assert result == {
        "after_import": False,
        "dns_after_import": False,
        "ip_is_mdns": False,
        "dns_after_ip": False,
        "local_is_mdns": True,
        "mdns_real": True,
        "not_a_frame": False,
        "after_isinstance": False,
        "video_is_frame": True,
        "video_is_audio": False,
        "decoded": [[640, 480]],
        "bad_data": "FFmpegError",
        "real_av": True,
    }


OPTIONAL = (
    "psutil",
    "click",
    "watchfiles",
    "websockets",
    "pydantic.v1",
    "ffmpeg",
    "numpy",
    "gateway.bridge.bridge",
)
"""Modules a serving node with one ingest and no viewer does not load: /v1/runtime's psutil,
uvicorn's command line (click, watchfiles), the WebSocket library (room chat), pydantic 1
(FastAPI's isinstance checks), ffmpeg-python and the bridges' machinery, numpy (mixing); httpx
neither (calling out, the workers' front). PyAV is checked by its FFmpeg libraries: the import
log lists its stand-in."""


@dataclass(frozen=True)
class NodeState:
    modules: set[str]  # from the node's ``-X importtime`` log
    threads: set[str]
    ffmpeg: bool

    def loaded(self, *packages: str) -> set[str]:
        """Which of ``packages`` the log shows (or a submodule of: ``importlib.import_module``
        does not log the module it is called for, only what that imports)."""
        return {p for p in packages for m in self.modules if m == p or m.startswith(p + ".")}


def node_state(pid: int, log: Path) -> NodeState:
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in log.read_text().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    threads = {(t / "comm").read_text().strip() for t in Path(f"/proc/{pid}/task").iterdir()}
    return NodeState(modules, threads, "libavcodec" in Path(f"/proc/{pid}/maps").read_text())


async def exercise(base: str, pid: int, log: Path, secret: str, key: str) -> None:
    """One anchor, then the checks; then /v1/runtime and a chat member, then the checks again."""
    from websockets.asyncio.client import connect

    from tests.support.small_anchor import publish_small_anchor

    tokens = TokenAuthority(secret)
    publisher = await publish_small_anchor(base, secret)
    try:
        connected = asyncio.Event()
        publisher.pc.on("connectionstatechange", lambda: connected.set())
        async with asyncio.timeout(20):
            while publisher.pc.connectionState != "connected":
                connected.clear()
                await connected.wait()
        await asyncio.sleep(1.5)  # media flowing through the ingest
        state = await asyncio.to_thread(node_state, pid, log)
        assert "gateway.app" in state.modules and "aiortc" in state.modules
        assert state.loaded(*OPTIONAL, "httpx") == set()
        assert not state.ffmpeg
        assert "libuv-worker" not in state.threads, state.threads

        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            r = await client.get("/v1/runtime", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["rss_bytes"] > 0, r.text
        audience = tokens.mint("demo", "audience", "chat", 600)
        url = base.replace("http://", "ws://") + f"/rooms/demo/messages?access_token={audience}"
        async with connect(url, open_timeout=10) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome", welcome
        state = await asyncio.to_thread(node_state, pid, log)
        assert state.loaded("psutil", "websockets") == {"psutil", "websockets"}
    finally:
        await publisher.close()


@pytest.mark.timeout(120)
def test_serving_node_loads_optional_modules_on_first_use(tmp_path: Path) -> None:
    """``stagecast serve`` with one WHIP anchor and no viewer: none of ``OPTIONAL`` imported and
    no libuv worker thread (the HTTP port is bound before the loop starts); then /v1/runtime
    (psutil) and a chat WebSocket (websockets) still work on first use, each loading its
    module then."""
    secret, key = "s" * 40, "operator-key-" + "k" * 20
    port = free_port()
    log = tmp_path / "importtime.log"
    env = {
        **os.environ,
        "PYTHONPROFILEIMPORTTIME": "1",
        "STAGECAST_AUTH__TOKEN_SECRET": secret,
        "STAGECAST_API__OPERATOR_KEY": key,
        "STAGECAST_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    argv += ["--udp-port", str(free_udp_port())]
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, 60)
        asyncio.run(exercise(base, proc.pid, log, secret, key))
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(15)


UVICORN_AND_PYDANTIC = """
import json, sys
import relay  # installs the deferral, as every node process does
import uvicorn
from pydantic import v1
result = {"click": "click" in sys.modules, "main": "uvicorn.main" in sys.modules}
import uvicorn.server
result["server_real"] = uvicorn.Server is uvicorn.server.Server
result["v1_isinstance"] = isinstance(object(), v1.BaseModel) or issubclass(int, v1.BaseModel)
from fastapi._compat import shared
result["fastapi_v1_check"] = shared.is_pydantic_v1_model_class(int)
result["v1_loaded"] = "pydantic.v1" in sys.modules
import pydantic.v1 as real_v1
class Old(real_v1.BaseModel):
    a: int = 1
result["v1_real"] = sys.modules["pydantic.v1"] is real_v1 and isinstance(Old(), v1.BaseModel)
result["fastapi_sees_v1"] = shared.is_pydantic_v1_model_class(Old)
import fastapi
from fastapi.openapi.models import OpenAPI
from pydantic import BaseModel
class Mine(BaseModel):
    a: int
result["openapi_models_deferred"] = not OpenAPI.__pydantic_complete__
result["ours_built"] = Mine.__pydantic_complete__
app = fastapi.FastAPI()
@app.get("/mine")
def mine() -> Mine:
    return Mine(a=1)
result["openapi"] = sorted(app.openapi()["components"]["schemas"])
result["openapi_models_built"] = OpenAPI.__pydantic_complete__
result["command"] = uvicorn.main.name  # the click command's attribute: loads uvicorn.main
result["command_kept"] = type(uvicorn.main).__name__ != "module"
result["run_real"] = uvicorn.run.__module__ == "uvicorn.main" and callable(uvicorn.run)
result["click_after"] = "click" in sys.modules
print(json.dumps(result))
"""


@pytest.mark.timeout(60)
def test_uvicorn_cli_and_pydantic_v1_stand_ins() -> None:
    """uvicorn imports without its command line (click, watchfiles), ``uvicorn.Server`` is the
    real class and the command line loads when something uses it; FastAPI's OpenAPI models build
    when the document is first asked for, ours when defined; FastAPI's pydantic 1
    checks answer without loading pydantic 1, and see a real pydantic 1 model once something
    imports it."""
    assert _last_json(UVICORN_AND_PYDANTIC) == {
        "click": False,
        "main": False,
        "server_real": True,
        "v1_isinstance": False,
        "fastapi_v1_check": False,
        "v1_loaded": False,
        "v1_real": True,
        "fastapi_sees_v1": True,
        "openapi_models_deferred": True,
        "ours_built": True,
        "openapi": ["Mine"],
        "openapi_models_built": True,
        "command": "main",
        "command_kept": True,
        "run_real": True,
        "click_after": True,
    }
