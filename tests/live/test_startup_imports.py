"""What a node loads at startup: a node that does not mix imports neither numpy (the mixer
loads it once a room mixes) nor the Redis client (only with ``cluster.redis_url``): ~21 MB of
resident memory a single node or an edge never uses. An origin does not load httpx either (with
click, rich and pygments, which httpx's command line brings: ~4.6 MB) until it calls out: an
edge pull, presence upstream, a webhook. Neither loads PyAV (FFmpeg's libraries, ~25 MB) until
something decodes or encodes, nor dnspython (~5 MB, aioice's mDNS) until a peer offers a
``.local`` candidate: aiortc and aioice get stand-ins (relay/rtc/deferred_imports.py), and
``test_aiortc_defers_pyav`` fails if an upgrade stops working with them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
