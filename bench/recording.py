"""Recording CPU per room (passthrough: the encoded frames are muxed, never decoded).

N rooms, each with a pre-encoded 720p30 H264 anchor (the LoopTrack clip, ~1.5 Mbps, GOP 1 s)
and a tone; a gateway in this process. Measures the process CPU over a window without recording,
then over the same window with every room recorded, and the recordings' writer threads' own CPU
(thread times by name). The anchors' own cost (aiortc sending, Opus encode) is in both windows.

    python -m bench.recording --rooms 1,4 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time

import httpx
import psutil

from gateway.synthetic import LoopTrack, ToneAudioTrack, encoded_clip, whip_publish
from tests.support.server import run_server


def writer_cpu() -> float:
    """CPU seconds of the live recording writer threads."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    return float(
        sum(
            t.user_time + t.system_time
            for t in psutil.Process().threads()
            if names.get(t.id, "").startswith("recording-")
        )
    )


async def window(seconds: float) -> float:
    proc = psutil.Process()
    t0, c0 = time.monotonic(), proc.cpu_times()
    await asyncio.sleep(seconds)
    c1 = proc.cpu_times()
    return float(c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0)


async def run(rooms: int, seconds: float) -> dict[str, float]:
    clip = encoded_clip(1280, 720, frames=90, gop=30)
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_server(
            recording={"dir": tmp, "min_free_mb": 1, "stop_free_mb": 0, "keyframe_interval": 0}
        ) as server,
    ):
        pubs = []
        api = httpx.AsyncClient(
            base_url=server.base_url, headers={"X-API-Key": server.gateway.operator_key}
        )
        try:
            for i in range(rooms):
                room = f"bench{i}"
                pubs.append(
                    await whip_publish(
                        server.base_url,
                        room,
                        server.anchor_token(room),
                        video=LoopTrack(clip),
                        audio=ToneAudioTrack(440),
                        prepacked=True,
                    )
                )
            await asyncio.sleep(3.0)
            idle = await window(seconds)
            for i in range(rooms):
                assert (await api.post(f"/v1/rooms/bench{i}/recording")).status_code == 201
            await asyncio.sleep(1.0)
            w0 = writer_cpu()
            busy = await window(seconds)
            writers = (writer_cpu() - w0) / seconds
            sizes = 0
            for i in range(rooms):
                body = (await api.delete(f"/v1/rooms/bench{i}/recording")).json()
                sizes += len(body["files"])
            listed = (await api.get("/v1/recordings")).json()
        finally:
            for p in pubs:
                await p.close()
            await api.aclose()
    mbps = sum(r["size"] for r in listed) * 8 / 1e6 / (seconds + 1)
    return {
        "rooms": rooms,
        "process_cores_idle": idle,
        "process_cores_recording": busy,
        "core_per_room": (busy - idle) / rooms,
        "writer_core_per_room": writers / rooms,
        "recorded_mbps_total": mbps,
        "files": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", default="1,4")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    for n in (int(x) for x in args.rooms.split(",")):
        r = asyncio.run(run(n, args.seconds))
        cells = (f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        print(" ".join(cells))


if __name__ == "__main__":
    main()
