"""Third-party WHIP clients from npm in headless Chromium (bundled by
scripts/third-party-clients): Eyevinn's @eyevinn/whip-web-client 1.1.7 decides on trickle ICE
from the methods the endpoint's OPTIONS lists and sends its trickle PATCHes with the entity tag
in an ``ETag`` header (not If-Match); Medooze's whip.js (@binbat/whip-whep) closes its peer
connection before its DELETE."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.synthetic import whep_watch
from tests.support.server import run_server

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / ".cache" / "third-party"
EYEVINN = BUNDLES / "EyevinnWHIPClient.js"
MEDOOZE = BUNDLES / "MedoozeWHIPClient.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]

if importlib.util.find_spec("playwright") is None or not os.path.exists(CHROMIUM):
    pytest.skip("playwright or chromium missing (scripts/bootstrap)", allow_module_level=True)
if not (EYEVINN.exists() and MEDOOZE.exists()):
    if os.environ.get("CI"):
        raise RuntimeError("the npm WHIP clients are not bundled (scripts/third-party-clients)")
    pytest.skip("scripts/third-party-clients bundles the npm clients", allow_module_level=True)
playwright_api = importlib.import_module("playwright.async_api")
pytestmark = [pytest.mark.browser]

EYEVINN_RUN = """
async ([endpoint, token]) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const client = new window.EyevinnWHIPClient({
    endpoint, opts: { debug: true, iceServers: [], authkey: token },
  });
  window.whip = client;
  client.ingest(stream).catch((e) => { window.whipError = String(e); });
}
"""


@pytest.mark.timeout(90)
async def test_eyevinn_whip_web_client_takes_the_trickle_path_and_ends_with_delete() -> None:
    with run_server() as server:
        gw = server.gateway
        room = "eyevinn"
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
            try:
                page = await browser.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))
                seen: list[tuple[str, int, dict[str, str]]] = []

                def on_response(resp: Any) -> None:
                    seen.append((resp.request.method, resp.status, dict(resp.headers)))

                page.on("response", on_response)
                await page.goto(server.base_url + "/healthz")  # same origin as the endpoint
                await page.add_script_tag(path=str(EYEVINN))
                t0 = time.monotonic()
                endpoint = f"{server.base_url}/whip/{room}"
                await page.evaluate(EYEVINN_RUN, [endpoint, server.anchor_token(room)])

                def connected() -> Any:
                    return next(
                        (s for s in gw.anchors.sessions.values() if s.connected_at is not None),
                        None,
                    )

                deadline = time.monotonic() + 20
                while connected() is None:
                    assert time.monotonic() < deadline, (seen, console)
                    await asyncio.sleep(0.02)
                session = connected()
                live_after = session.connected_at - t0 if session.connected_at else -1.0
                while session.last_media_at is None:
                    assert time.monotonic() < deadline, "no media from the client"
                    await asyncio.sleep(0.02)
                media_after = time.monotonic() - t0
                await asyncio.sleep(0.5)  # its trickle PATCHes
                options = [h for m, _, h in seen if m == "OPTIONS"]
                patches = [(st, h) for m, st, h in seen if m == "PATCH"]
                print(
                    f"eyevinn: connected {live_after:.2f} s, first media {media_after:.2f} s "
                    f"after ingest(); PATCH answers {[st for st, _ in patches]}"
                )
                # OPTIONS told it PATCH is there: it took the trickle path (no gathering wait)
                assert options and "PATCH" in options[0]["access-control-allow-methods"]
                assert "PATCH" not in options[0]["allow"]  # the endpoint itself takes none
                assert any("supports Trickle ICE" in line for line in console), console
                # its PATCHes carry ETag, not If-Match: 428 names the header it should send
                if patches:
                    assert {st for st, _ in patches} == {428}, patches
                assert await page.evaluate("window.whipError || null") is None
                await page.evaluate("window.whip.destroy()")
                deletes = [st for m, st, _ in seen if m == "DELETE"]
                assert deletes == [200], seen
                deadline = time.monotonic() + 5
                while gw.anchors.sessions:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            finally:
                await browser.close()


MEDOOZE_RUN = """
async ([endpoint, token]) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
  window.whip = new window.MedoozeWHIPClient();
  await window.whip.publish(pc, endpoint, token);
}
"""


@pytest.mark.timeout(90)
async def test_medooze_whip_stop_ends_the_stream_for_viewers_at_once() -> None:
    """whip.js's stop() closes its peer connection, then DELETEs: 200, and the viewers' stream
    ends at once, not after the 10 s reconnect grace."""
    with run_server(sessions={"reconnect_grace": 10.0}) as server:
        gw = server.gateway
        room = "medooze"
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20_000)
            viewer = None
            try:
                page = await browser.new_page()
                deletes: list[int] = []
                page.on(
                    "response",
                    lambda r: deletes.append(r.status) if r.request.method == "DELETE" else None,
                )
                await page.goto(server.base_url + "/healthz")
                await page.add_script_tag(path=str(MEDOOZE))
                endpoint = f"{server.base_url}/whip/{room}"
                await page.evaluate(MEDOOZE_RUN, [endpoint, server.anchor_token(room)])
                viewer = await whep_watch(server.base_url, room, kinds=("video",), decode=False)
                deadline = time.monotonic() + 20
                while viewer.video_frames < 10:
                    assert time.monotonic() < deadline, "the viewer got no frames"
                    await asyncio.sleep(0.05)
                await page.evaluate("window.whip.stop()")
                t0 = time.monotonic()
                assert deletes == [200], deletes
                while gw.viewers.sessions:
                    assert time.monotonic() - t0 < 3, "the viewer was kept for the grace"
                    await asyncio.sleep(0.02)
                print(f"medooze stop(): viewer's session ended {time.monotonic() - t0:.2f} s later")
                assert not gw.anchors.sessions and gw.stages.live_hub(room) is None
            finally:
                if viewer is not None:
                    await viewer.close(delete=False)
                await browser.close()
