"""Recording end to end: a real gateway, a real aiortc anchor (stamped video + tone), the file
read back with PyAV, its VOD playlist played by the real ffmpeg binary over HTTP, range
requests, the webhook, an anchor reconnect within the grace, and a full (tmpfs) disk."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import imageio_ffmpeg
import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whip_publish
from tests.live.test_live_path import wait_for
from tests.live.test_webhooks import receiver
from tests.support.server import RunningServer, run_server

HOOK_SECRET = "hook-secret-" + "z" * 30
FAST = {"check_interval": 0.2, "keyframe_interval": 1.0, "min_free_mb": 1, "stop_free_mb": 0}


def api(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"X-API-Key": server.gateway.operator_key}, timeout=15
    )


async def publish(
    server: RunningServer, room: str, size: tuple[int, int] = (320, 180), subject: str = ""
) -> Any:
    token = (
        server.gateway.tokens.mint(room, "anchor", subject, 600)
        if subject
        else server.anchor_token(room)
    )
    return await whip_publish(
        server.base_url,
        room,
        token,
        video=StampedVideoTrack(size[0], size[1], 30),
        audio=ToneAudioTrack(440),
        video_codec="H264",
    )


def probe(path: Path) -> dict[str, Any]:
    """Streams, durations and first timestamps of a media file, decoded to the end."""
    out: dict[str, Any] = {}
    with av.open(str(path)) as c:
        for s in c.streams:
            first: float | None = None
            last = 0.0
            frames = 0
            for pkt in c.demux(s):
                if pkt.pts is None:
                    continue
                t = float(pkt.pts * pkt.time_base)
                first = t if first is None else min(first, t)
                last = max(last, t + float((pkt.duration or 0) * pkt.time_base))
                frames += 1
            c.seek(0)
            out[s.type] = {
                "codec": s.codec_context.name,
                "start": first,
                "end": last,
                "packets": frames,
            }
    with av.open(str(path)) as c:  # every video frame decodes
        out["decoded"] = sum(1 for _ in c.decode(video=0))
    return out


async def record(
    client: httpx.AsyncClient, room: str, seconds: float, *, mp4: bool = True
) -> dict[str, Any]:
    started = await client.post(f"/v1/rooms/{room}/recording")
    assert started.status_code == 201, started.text
    await asyncio.sleep(seconds)
    if mp4:  # while written: an EVENT playlist of the fragments so far, no ENDLIST
        current = (await client.get(f"/v1/rooms/{room}/recording")).json()["current"]
        text = (await client.get(current["playlist_url"])).text
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "ENDLIST" not in text, text
        assert text.count("#EXTINF") >= 1, text
    stopped = await client.delete(f"/v1/rooms/{room}/recording")
    assert stopped.status_code == 200, stopped.text
    body: dict[str, Any] = stopped.json()
    return body


@pytest.mark.timeout(90)
async def test_record_stop_probe_play_range_webhook(tmp_path: Path) -> None:
    with receiver() as (url, hooks):
        settings = {"dir": str(tmp_path), **FAST}
        with run_server(
            recording=settings, webhooks={"urls": [url], "secret": HOOK_SECRET}
        ) as server:
            async with api(server) as client:
                assert (await client.post("/v1/rooms", json={"name": "show"})).status_code == 201
                pub = await publish(server, "show")
                try:
                    assert await wait_for(lambda: server.gateway.stages.live_hub("show"), 10)
                    await asyncio.sleep(1.0)
                    body = await record(client, "show", 5.0)
                finally:
                    await pub.close()
                assert len(body["files"]) == 1
                rid = body["files"][0]
                listed = (await client.get("/v1/recordings", params={"room": "show"})).json()
                assert [r["id"] for r in listed] == [rid]
                view = listed[0]
                assert view["state"] == "complete" and view["format"] == "mp4"
                assert 4.0 <= view["duration_s"] <= 6.0, view
                path = tmp_path / f"{rid}.mp4"
                assert view["size"] == path.stat().st_size > 10_000

                info = await asyncio.to_thread(probe, path)
                assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "opus"
                v, a = info["video"], info["audio"]
                assert 4.0 <= v["end"] - v["start"] <= 6.0, info
                assert 4.0 <= a["end"] - a["start"] <= 6.0, info
                assert abs(v["start"] - a["start"]) < 0.2, info  # A/V start together
                assert info["decoded"] >= 100, info  # ~30 fps for ~5 s, every one decodes

                # range request: the exact bytes, 206
                data = path.read_bytes()
                part = await client.get(
                    f"/v1/recordings/{rid}/media.mp4", headers={"Range": "bytes=100-1099"}
                )
                assert part.status_code == 206 and part.content == data[100:1100]
                assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
                whole = await client.get(f"/v1/recordings/{rid}/media.mp4")
                assert whole.status_code == 200 and whole.content == data

                # VOD playlist: byte ranges into the one file, played by ffmpeg over HTTP
                text = (await client.get(f"/v1/recordings/{rid}/index.m3u8")).text
                assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and text.endswith("#EXT-X-ENDLIST\n")
                assert '#EXT-X-MAP:URI="0-' in text and ".m4s\n#EXT-X-ENDLIST" in text
                out = tmp_path / "played.mp4"
                key = server.gateway.operator_key
                proc = await asyncio.to_thread(
                    subprocess.run,
                    [
                        imageio_ffmpeg.get_ffmpeg_exe(),
                        "-v",
                        "error",
                        "-headers",
                        f"X-API-Key: {key}\r\n",
                        "-i",
                        f"{server.base_url}/v1/recordings/{rid}/index.m3u8",
                        "-c",
                        "copy",
                        "-y",
                        str(out),
                    ],
                    capture_output=True,
                    timeout=30,
                )
                assert proc.returncode == 0, proc.stderr.decode()
                played = await asyncio.to_thread(probe, out)
                assert played["decoded"] >= info["decoded"] - 2, (played, info, text)
                assert "audio" in played

                # untrusted ids never name a path; delete removes both files
                for bad in ("..", "..%2F..%2Fetc%2Fpasswd", "x" * 30):
                    r = await client.get(f"/v1/recordings/{bad}/media.mp4")
                    assert r.status_code == 404, (bad, r.status_code)
                assert (await client.delete(f"/v1/recordings/{rid}")).status_code == 204
                assert not path.exists() and not (tmp_path / f"{rid}.json").exists()
                assert (await client.get(f"/v1/recordings/{rid}")).status_code == 404
            assert await wait_for(
                lambda: any(e["type"] == "recording.completed" for e in hooks.events), 10
            )
        done: Any = next(e for e in hooks.events if e["type"] == "recording.completed")
        assert done["data"]["recording_id"] == rid and done["data"]["duration_s"] >= 4.0


@pytest.mark.timeout(90)
async def test_reconnect_within_grace_keeps_one_file_new_program_splits(tmp_path: Path) -> None:
    with run_server(
        recording={"dir": str(tmp_path), **FAST}, sessions={"reconnect_grace": 10.0}
    ) as server:
        async with api(server) as client:
            await client.post("/v1/rooms", json={"name": "rc", "record": True})
            pub = await publish(server, "rc")
            assert await wait_for(lambda: "rc" in server.gateway.recordings.recorders, 10)
            await asyncio.sleep(2.5)
            hub = server.gateway.stages.live_hub("rc")
            await pub.close(delete=False)  # the network drops: the grace holds the program
            rooms = server.gateway.rooms.rooms
            assert await wait_for(lambda: rooms["rc"].grace.running and not rooms["rc"].anchors, 8)
            await asyncio.sleep(1.0)
            pub = await publish(server, "rc")
            await asyncio.sleep(2.5)
            assert server.gateway.stages.live_hub("rc") is hub
            state = (await client.get("/v1/rooms/rc/recording")).json()
            assert len(state["files"]) == 1, state
            await pub.close()  # DELETE: the program ends, the file is complete
            assert await wait_for(lambda: server.gateway.stages.live_hub("rc") is None, 10)
            pub = await publish(server, "rc")  # a new program: a new file
            try:
                assert await wait_for(
                    lambda: len(server.gateway.recordings.recorders["rc"].files) == 2, 10
                )
                await asyncio.sleep(1.5)
            finally:
                await pub.close()
            state = (await client.delete("/v1/rooms/rc/recording")).json()
            first, second = state["files"]
            meta = (await client.get(f"/v1/recordings/{first}")).json()
            assert meta["state"] == "complete" and meta["reason"] == "stream ended"
            # one file over the reconnect: timestamps run on (2.5 + 1 + 2.5 s), no restart at 0
            info = await asyncio.to_thread(probe, tmp_path / f"{first}.mp4")
            v = info["video"]
            assert v["end"] - v["start"] >= 5.0, info
            assert info["decoded"] >= 100, info
            assert (tmp_path / f"{second}.mp4").stat().st_size > 0


@contextlib.contextmanager
def tiny_disk(size: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="stagecast-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()


@pytest.mark.timeout(90)
async def test_disk_guard_refuses_then_stops_cleanly_before_full() -> None:
    with tiny_disk("3m") as root:
        settings = {**FAST, "dir": str(root), "min_free_mb": 2, "stop_free_mb": 1}
        with run_server(recording=settings) as server:
            async with api(server) as client:
                await client.post("/v1/rooms", json={"name": "disk"})
                filler = root / "filler"
                filler.write_bytes(b"\0" * (3 * 1024 * 1024 // 2))  # 1.5 MB free: below 2
                refused = await client.post("/v1/rooms/disk/recording")
                assert refused.status_code == 507, refused.text
                assert refused.headers["content-type"].startswith("application/problem+json")
                filler.unlink()
                pub = await publish(server, "disk", (640, 360))
                try:
                    assert (await client.post("/v1/rooms/disk/recording")).status_code == 201
                    # ~1.5 Mbps fills the ~2 MB above the stop threshold in seconds
                    assert await wait_for(lambda: _closed(server, "disk"), 30, 0.2)
                finally:
                    await pub.close()
                files = (await client.get("/v1/recordings")).json()
                assert len(files) == 1 and files[0]["reason"] == "disk full", files
                path = root / f"{files[0]['id']}.mp4"
                info = await asyncio.to_thread(probe, path)  # closed and playable
                assert info["decoded"] > 10 and "audio" in info
                assert (await client.post("/v1/rooms/disk/recording")).status_code == 507
                await asyncio.sleep(0)


@pytest.mark.timeout(90)
async def test_write_failing_on_a_full_disk_leaves_a_playable_file() -> None:
    """The guard's backstop: with no free-space stop, the writer hits ENOSPC; the file is cut
    back to its last whole fragment and the recording ends by itself."""
    with tiny_disk("2m") as root:
        settings = {**FAST, "dir": str(root), "min_free_mb": 1, "stop_free_mb": 0}
        with run_server(recording=settings) as server:
            async with api(server) as client:
                await client.post("/v1/rooms", json={"name": "full"})
                pub = await publish(server, "full", (640, 360))
                try:
                    assert (await client.post("/v1/rooms/full/recording")).status_code == 201
                    assert await wait_for(lambda: _closed(server, "full"), 30, 0.2)
                finally:
                    await pub.close()
                files = (await client.get("/v1/recordings")).json()
                assert len(files) == 1 and files[0]["reason"].startswith("write failed"), files
                path = root / f"{files[0]['id']}.mp4"
                info = await asyncio.to_thread(probe, path)
                assert info["decoded"] > 10 and "audio" in info


VOD_PAGE = """<!doctype html><html><body>
<video id="v" muted autoplay playsinline width="320" height="180"></video>
<script src="/__test__/hls.js"></script>
<script>
window.player = {errors: [], fatal: [], frags: 0};
const video = document.getElementById('v');
const hls = new Hls({xhrSetup: (xhr) => xhr.setRequestHeader('X-API-Key', KEY)});
hls.on(Hls.Events.ERROR, (_e, d) => {
  const what = d.details + (d.error ? ': ' + String(d.error.message) : '');
  window.player.errors.push(what);
  if (d.fatal) window.player.fatal.push(what);
});
hls.on(Hls.Events.FRAG_BUFFERED, () => { window.player.frags += 1; });
hls.loadSource(PLAYLIST);
hls.attachMedia(video);
window.state = () => ({...window.player, ended: video.ended, time: video.currentTime,
  duration: video.duration, frames: video.getVideoPlaybackQuality().totalVideoFrames,
  tracks: hls.audioTracks.length});
</script></body></html>"""


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_hls_js_plays_the_vod_playlist_to_its_end(tmp_path: Path) -> None:
    import importlib
    import json
    import os

    from tests.live.test_hls_players import CHROMIUM, HLS_JS, _missing

    if why := _missing():
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with run_server(recording={"dir": str(tmp_path), **FAST}) as server:
        async with api(server) as client:
            await client.post("/v1/rooms", json={"name": "vod"})
            pub = await publish(server, "vod")
            try:
                assert await wait_for(lambda: server.gateway.stages.live_hub("vod"), 10)
                body = await record(client, "vod", 5.0)
            finally:
                await pub.close()
            rid = body["files"][0]
            playlist = f"{server.base_url}/v1/recordings/{rid}/index.m3u8"
            html = VOD_PAGE.replace("PLAYLIST", json.dumps(playlist)).replace(
                "KEY", json.dumps(server.gateway.operator_key)
            )
            pw_api = importlib.import_module("playwright.async_api")
            async with pw_api.async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--no-first-run",
                        "--autoplay-policy=no-user-gesture-required",
                    ],
                    timeout=20_000,
                )
                try:
                    page = await browser.new_page()

                    async def serve_page(route: Any) -> None:
                        await route.fulfill(status=200, content_type="text/html", body=html)

                    async def serve_js(route: Any) -> None:
                        await route.fulfill(
                            status=200, content_type="text/javascript", path=str(HLS_JS)
                        )

                    await page.route(f"{server.base_url}/__test__/page.html", serve_page)
                    await page.route(f"{server.base_url}/__test__/hls.js", serve_js)
                    await page.goto(f"{server.base_url}/__test__/page.html")
                    state: dict[str, Any] = {}
                    deadline = asyncio.get_running_loop().time() + 30
                    while asyncio.get_running_loop().time() < deadline:
                        state = await page.evaluate("window.state()")
                        assert not state["fatal"], state
                        if state["ended"]:
                            break
                        await asyncio.sleep(0.25)
                finally:
                    await browser.close()
    assert state["ended"], state  # played to EXT-X-ENDLIST's end
    assert 4.0 <= state["duration"] <= 6.5, state
    assert state["frames"] >= 100, state  # ~30 fps for ~5 s


@pytest.mark.timeout(90)
async def test_each_anchor_recorded_beside_the_program(tmp_path: Path) -> None:
    with run_server(recording={"dir": str(tmp_path), **FAST}) as server:
        async with api(server) as client:
            await client.post("/v1/rooms", json={"name": "duo"})
            first = await publish(server, "duo")
            second = None
            try:
                assert await wait_for(lambda: server.gateway.stages.live_hub("duo"), 10)
                made = await client.post("/v1/rooms/duo/recording", json={"anchors": True})
                assert made.status_code == 201, made.text
                second = await publish(
                    server, "duo", subject="cohost"
                )  # a co-host: the program is mixed
                recs = server.gateway.recordings.recorders
                assert await wait_for(lambda: len(recs["duo"].per_anchor) == 2, 10)
                await asyncio.sleep(3.0)
            finally:
                for p in (first, second):
                    if p is not None:
                        await p.close()
            await client.delete("/v1/rooms/duo/recording")
            files = (await client.get("/v1/recordings", params={"room": "duo"})).json()
        anchors = sorted(f["anchor"] for f in files if f["anchor"])
        assert len(files) == 3 and len(anchors) == 2, files  # the program + one per anchor
        for f in files:
            assert f["state"] == "complete", f
            info = await asyncio.to_thread(probe, tmp_path / f"{f['id']}.mp4")
            assert info["decoded"] >= 30 and "audio" in info, (f, info)


@pytest.mark.timeout(60)
async def test_a_vp8_program_is_recorded_to_webm(tmp_path: Path) -> None:
    with run_server(recording={"dir": str(tmp_path), **FAST}) as server:
        async with api(server) as client:
            await client.post("/v1/rooms", json={"name": "vp8"})
            pub = await whip_publish(
                server.base_url,
                "vp8",
                server.anchor_token("vp8"),
                video=StampedVideoTrack(320, 180, 30),
                audio=ToneAudioTrack(440),
                video_codec="VP8",
            )
            try:
                assert await wait_for(lambda: server.gateway.stages.live_hub("vp8"), 10)
                body = await record(client, "vp8", 3.0, mp4=False)
            finally:
                await pub.close()
            rid = body["files"][0]
            view = (await client.get(f"/v1/recordings/{rid}")).json()
            assert view["format"] == "webm" and view["playlist_url"] is None
            assert (await client.get(f"/v1/recordings/{rid}/index.m3u8")).status_code == 409
            got = await client.get(f"/v1/recordings/{rid}/media.webm")
            assert got.status_code == 200 and got.headers["content-type"] == "video/webm"
        info = await asyncio.to_thread(probe, tmp_path / f"{rid}.webm")
        assert info["video"]["codec"] == "vp8" and info["audio"]["codec"] == "opus"
        assert info["decoded"] >= 60, info


@pytest.mark.timeout(60)
async def test_bad_requests_and_a_closed_room(tmp_path: Path) -> None:
    with run_server(recording={"dir": str(tmp_path), **FAST}) as server:
        async with api(server) as client:
            assert (await client.post("/v1/rooms/nowhere/recording")).status_code == 404
            assert (await client.delete("/v1/rooms/nowhere/recording")).status_code == 404
            assert (await client.post("/v1/rooms/a%20b/recording")).status_code == 422
            bad_body = await client.post("/v1/rooms/x/recording", json={"anchorz": True})
            assert bad_body.status_code == 422
            await client.post("/v1/rooms", json={"name": "closing"})
            both = await asyncio.gather(
                client.post("/v1/rooms/closing/recording"),
                client.post("/v1/rooms/closing/recording"),
            )
            assert sorted(r.status_code for r in both) == [201, 409]
            assert (await client.get("/v1/rooms/closing/recording")).json()["files"] == []
            assert (await client.delete("/v1/rooms/closing")).status_code == 204
            recs = server.gateway.recordings.recorders
            assert await wait_for(lambda: "closing" not in recs, 5)
            assert (await client.get("/v1/rooms/closing/recording")).status_code == 404
            async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
                assert (await anonymous.get("/v1/recordings")).status_code == 401


def _closed(server: RunningServer, room: str) -> bool:
    """The room's recording ended and its file's meta says so (the recorder leaves the active
    set first, then drains its writer and writes the final meta: the reason is set there)."""
    recordings = server.gateway.recordings
    metas = recordings.list(room)
    return room not in recordings.recorders and bool(metas) and metas[-1].state == "complete"
