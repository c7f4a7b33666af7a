"""Each viewer's bandwidth estimate, over a real uvicorn: transport-cc answered to an offer that
has it (Chromium's; Firefox's on video only) and not to one without (aiortc's), an aiortc viewer
estimated from REMB or receiver reports, all of it in the viewers listing and /metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.synthetic import StampedVideoTrack, ToneAudioTrack, whep_watch, whip_publish
from relay.rtc.adapter import flush_feedback_lane
from tests.live.test_live_path import wait_for
from tests.live.test_protocol import SDP, make_offer
from tests.support.offers import fixture
from tests.support.server import RunningServer, run_server

TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """Admission control off: on a loaded machine it would refuse these viewers (503)."""
    with run_server(limits={"max_loop_lag": None, "max_loop_busy": None}) as srv:
        yield srv


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.gateway.operator_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as c:
        yield c


def video_section(sdp: str) -> str:
    return next(s for s in sdp.split("m=")[1:] if s.startswith("video"))


@pytest.mark.timeout(60)
async def test_transport_cc_is_answered_to_chromium_and_aiortc_viewers_get_an_estimate(
    server: RunningServer, api: httpx.AsyncClient
) -> None:
    room = "est1"
    pub = await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(640, 360, 30),
        audio=ToneAudioTrack(),
    )
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        chromium = await c.post(f"/whep/{room}", content=fixture("chromium_whep.sdp"), headers=SDP)
        assert chromium.status_code == 201, chromium.text
        video = video_section(chromium.text)
        ext = re.search(rf"a=extmap:(\d+) {re.escape(TWCC)}", video)
        assert ext is not None and ext.group(1) == "4"  # the offer's id
        pt = re.search(r"m=video \d+ \S+ (\d+)", "m=" + video)
        assert pt is not None and f"a=rtcp-fb:{pt.group(1)} transport-cc" in video
        assert TWCC in next(s for s in chromium.text.split("m=")[1:] if s.startswith("audio"))
        session = server.gateway.viewers.sessions[chromium.headers["location"].rsplit("/", 1)[1]]
        assert session.transport_cc
        await c.delete(chromium.headers["location"])

        firefox = await c.post(f"/whep/{room}", content=fixture("firefox_whep.sdp"), headers=SDP)
        assert firefox.status_code == 201, firefox.text
        assert f"a=extmap:7 {TWCC}" in video_section(firefox.text)  # video only, as offered
        assert TWCC not in next(s for s in firefox.text.split("m=")[1:] if s.startswith("audio"))
        await c.delete(firefox.headers["location"])

        aiortc = await c.post(f"/whep/{room}", content=await make_offer("recvonly"), headers=SDP)
        assert (
            aiortc.status_code == 201
            and TWCC not in aiortc.text
            and "transport-cc" not in (aiortc.text)
        )
        await c.delete(aiortc.headers["location"])

    viewer = await whep_watch(server.base_url, room)
    try:
        assert await wait_for(lambda: viewer.video_frames > 30, 10)

        async def estimated() -> dict[str, object] | None:
            listed = (await api.get(f"/v1/rooms/{room}/viewers")).json()["viewers"]
            return listed[0] if listed and listed[0]["estimate_bps"] else None

        view = None
        for _ in range(80):  # aiortc sends REMB from its first packets, RRs each ~1 s
            view = await estimated()
            if view is not None:
                break
            await asyncio.sleep(0.1)
        assert view is not None
        assert view["estimate_source"] in ("remb", "rr") and not view["transport_cc"]
        # its sender reports come from the service's one tick, and its receiver reports
        # answer them: the round trip is known
        session = next(iter(server.gateway.viewers.sessions.values()))
        video = session.senders["video"]
        assert await wait_for(lambda: video.round_trip_time() is not None, 5)
        assert session.reports_sent >= 1
        assert isinstance(view["estimate_bps"], int) and view["estimate_bps"] >= 30_000
        assert isinstance(view["sent_bps"], int) and view["sent_bps"] > 50_000

        metrics = await api.get("/metrics")
        text = metrics.text
        assert re.search(r'stagecast_viewer_estimate_source\{source="(remb|rr)"\} 1\.0', text)
        assert "stagecast_viewer_estimate_bps_count 1.0" in text
        assert "stagecast_viewer_transport_feedbacks_total 0.0" in text
    finally:
        await viewer.close()
        await pub.close()


@pytest.mark.timeout(60)
async def test_transport_cc_feedback_is_taken_in_the_shared_ports_read_callback(
    server: RunningServer,
) -> None:
    """A viewer that negotiated transport-cc and sends its feedback as Chromium does (one
    datagram per feedback, every 50 ms): nearly every datagram reaches the estimator from the
    shared port's read callback (relay/rtc/rtcp_reader.py), none malformed or unknown, and the
    estimate is transport-cc's."""
    from bench.load_viewers import SocketCounter, offer_transport_cc

    room = "est3"
    pub = await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(640, 360, 30),
        audio=ToneAudioTrack(),
    )
    viewer = await whep_watch(
        server.base_url, room, decode=False, offer_transform=offer_transport_cc
    )
    try:
        assert await wait_for(lambda: viewer.first_frame_at is not None, 10)
        sessions = server.gateway.viewers.sessions
        session = next(iter(sessions.values()))
        assert session.transport_cc and session.estimator is not None
        counter = SocketCounter(viewer, feedback=True)
        deadline = asyncio.get_running_loop().time() + 3.0
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            await counter.send_feedback(time.monotonic())
        await asyncio.sleep(0.2)
        estimator = session.estimator
        assert counter.feedback_sent >= 20
        assert estimator.feedbacks >= 0.9 * counter.feedback_sent, (
            estimator.feedbacks,
            counter.feedback_sent,
        )
        # through the port's feedback lane or read callback, not aiortc's queue (a datagram
        # behind a queued one of the same session takes the queue: rare); the lane counts
        # once a second; nearly all by the lane (the first takes the read callback's path)
        assert flush_feedback_lane(session.pc) >= 0.8 * estimator.feedbacks
        assert session.port_feedbacks >= 0.8 * estimator.feedbacks, (
            session.port_feedbacks,
            estimator.feedbacks,
        )
        assert estimator.malformed == 0 and estimator.unknown == 0 and session.rtcp_errors == 0
        assert session.estimate.source == "twcc"
        assert counter.packets > 100  # the media kept flowing
    finally:
        await viewer.close()
        await pub.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_chromium_viewer_is_estimated_from_its_transport_cc_feedback(
    server: RunningServer, api: httpx.AsyncClient
) -> None:
    from tests.live.test_browser import chromium, open_page, until

    room = "est2"
    pub = await whip_publish(
        server.base_url,
        room,
        server.anchor_token(room),
        video=StampedVideoTrack(640, 360, 30),
        audio=ToneAudioTrack(),
    )
    try:
        async with chromium(fake_media=False) as browser:
            page = await open_page(browser, f"{server.base_url}/watch?room={room}")
            await until(page, "window.stagecast.framesPresented > 30", 15, "frames")
            sessions = server.gateway.viewers.sessions

            def twcc() -> bool:
                return any(s.estimate.source == "twcc" for s in sessions.values())

            assert await wait_for(twcc, 10)
            await asyncio.sleep(2.0)
            view = (await api.get(f"/v1/rooms/{room}/viewers")).json()["viewers"][0]
            assert view["transport_cc"] and view["estimate_source"] == "twcc", view
            assert view["feedback_malformed"] == 0
            # a clean loopback: at least what it is sent, no loss, the detector calm
            assert view["estimate_bps"] >= 0.9 * view["acked_bps"] > 50_000, view
            assert view["estimate_loss"] < 0.02 and view["delay_usage"] != "overuse", view
            session = next(iter(sessions.values()))
            assert session.estimator is not None and session.estimator.unknown == 0
            # Chromium's feedback datagrams are taken in the shared port's lane or read callback
            assert flush_feedback_lane(session.pc) > 0
            assert session.port_feedbacks >= 0.8 * session.estimator.feedbacks > 0
            # the browser took the sequence numbers: its own stats count the feedback it sent
            sdp = await page.evaluate("window.stagecast.pc.remoteDescription.sdp")
            assert TWCC in sdp and "transport-cc" in sdp
            text = (await api.get("/metrics")).text
            assert 'stagecast_viewer_estimate_source{source="twcc"} 1.0' in text
    finally:
        await pub.close()
