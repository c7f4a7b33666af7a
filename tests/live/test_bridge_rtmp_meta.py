"""What a CDN's ingest sees of our RTMP push: nginx-rtmp's own statistics page (its view of the
stream's metadata) for the H264 copy path and the VP8 transcode path."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.launcher import free_port
from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from tests.support.server import RunningServer, run_server

NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
BRIDGE = {"backoff_initial": 0.2, "backoff_max": 1.0, "stop_timeout": 2.0}

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or not NGINX_MODULE.exists(),
    reason="nginx with libnginx-mod-rtmp is not installed (scripts/bootstrap installs it)",
)


class RtmpWithStat:
    """nginx-rtmp in the foreground with its ``rtmp_stat`` page on an HTTP port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.http_port = root, free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "nginx.conf"
        self.conf.write_text(
            f"load_module {NGINX_MODULE};\n"
            "daemon off;\nmaster_process off;\n"
            f"pid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "rtmp { server {\n"
            f"  listen 127.0.0.1:{self.port};\n"
            "  application live { live on; record off; }\n"
            "} }\n"
            "http {\n"
            f"  access_log off; client_body_temp_path {root}/body;\n"
            f"  proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;\n"
            f"  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.http_port};\n"
            "    location /stat { rtmp_stat all; } }\n"
            "}\n"
        )
        self.proc = subprocess.Popen(
            ["nginx", "-e", str(root / "error.log"), "-p", str(root), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((root / "error.log").read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen") from None
                time.sleep(0.05)

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    async def video_meta(self, key: str) -> dict[str, str] | None:
        """nginx-rtmp's ``<meta><video>`` of the stream ``key`` (None while not published)."""
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{self.http_port}/stat")
        resp.raise_for_status()
        for stream in ET.fromstring(resp.text).iter("stream"):
            if stream.findtext("name") == key:
                video = stream.find("meta/video")
                if video is not None:
                    return {child.tag: child.text or "" for child in video}
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def rtmp(tmp_path: Path) -> Iterator[RtmpWithStat]:
    server = RtmpWithStat(tmp_path / "nginx")
    try:
        yield server
    finally:
        server.kill()


async def publish(server: RunningServer, room: str, codec: str, fps: int) -> Any:
    return await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(640, 360, fps),
        audio=ToneAudioTrack(440),
        video_codec=codec,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("codec", "fps"), [("H264", 30), ("VP8", 25)])
async def test_rtmp_metadata_carries_the_frame_rate(
    rtmp: RtmpWithStat, codec: str, fps: int
) -> None:
    with run_server(bridge=BRIDGE) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"X-API-Key": server.gateway.operator_key}
        ) as api:
            assert (await api.post("/v1/rooms", json={"name": "meta"})).status_code == 201
            made = await api.post(
                "/v1/rooms/meta/bridges", json={"kind": "rtmp", "url": rtmp.url("k")}
            )
            assert made.status_code == 201, made.text
            pub = await publish(server, "meta", codec, fps)
            try:
                deadline = time.monotonic() + 20
                meta = None
                while time.monotonic() < deadline:
                    meta = await rtmp.video_meta("k")
                    if meta and meta.get("width") not in (None, "", "0"):
                        break
                    await asyncio.sleep(0.2)
                assert meta is not None, "nginx-rtmp never saw the stream"
                assert (meta["width"], meta["height"]) == ("640", "360"), meta
                assert meta["codec"] == "H264", meta
                assert meta["frame_rate"] == str(fps), meta  # nginx-rtmp showed 0
            finally:
                await pub.close()
