"""A viewer going on stage the way a page does it, with aiortc: raise a hand, long-poll the
request until approved, publish a colour and a tone with the guest token. Used by
tests/live/test_stage_guests.py and bench/stage_join.py (approval -> tile in the program)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiortc import RTCPeerConnection

from gateway.synthetic import Publisher, SolidColourTrack, ToneAudioTrack, offer_answer
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.support.mixer_clients import RGB, ProgramViewer, watch_program


@dataclass
class Hand:
    room: str
    id: str
    key: str
    client: httpx.AsyncClient
    marks: dict[str, float] = field(default_factory=dict)  # step -> monotonic time

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Stage-Key": self.key}

    async def state(self, after: int = -1, wait: float = 0) -> dict[str, Any]:
        resp = await self.client.get(
            f"/rooms/{self.room}/stage/requests/{self.id}",
            params={"after": after, "wait": wait},
            headers=self.headers,
        )
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    async def until_decided(self, timeout: float = 20) -> dict[str, Any]:
        """Long-polls (as the watch page does) until the request is no longer pending."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            view = await self.state(after=seen, wait=min(10.0, deadline - time.monotonic()))
            if view["state"] != "pending":
                return view
            seen = view["version"]
        raise AssertionError("the stage request was never decided")

    async def leave(self) -> httpx.Response:
        return await self.client.delete(
            f"/rooms/{self.room}/stage/requests/{self.id}", headers=self.headers
        )


async def raise_hand(
    client: httpx.AsyncClient, room: str, name: str, token: str | None = None
) -> Hand:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await client.post(f"/rooms/{room}/stage/requests", json={"name": name}, headers=headers)
    resp.raise_for_status()
    body = resp.json()
    return Hand(room, body["id"], body["key"], client)


async def approve(client: httpx.AsyncClient, room: str, request_id: str, token: str) -> float:
    """POSTs the approval; returns the monotonic time it was answered."""
    resp = await client.post(
        f"/rooms/{room}/stage/requests/{request_id}/approve",
        headers={"Authorization": f"Bearer {token}"},
    )
    resp.raise_for_status()
    return time.monotonic()


async def go_on_stage(
    base_url: str, hand: Hand, colour: str, tone: float
) -> tuple[dict[str, Any], Publisher]:
    """As the watch page does: the offer (candidates gathered) is made while the hand is up;
    once approved it is POSTed with the guest token, publishing ``colour`` and ``tone``."""
    pc = RTCPeerConnection(rtc_configuration(()))
    video = SolidColourTrack(RGB[colour])
    pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(ToneAudioTrack(tone, amplitude=0.25), direction="sendonly")
    client = httpx.AsyncClient(base_url=base_url, timeout=20)
    try:
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers here
        view = await hand.until_decided()
        hand.marks["token"] = time.monotonic()
        assert view["state"] == "approved", view
        headers = {"Authorization": f"Bearer {view['token']}"}
        resp = await offer_answer(pc, client, f"/whip/{hand.room}", headers)
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    hand.marks["whip"] = time.monotonic()
    return view, Publisher(pc, resp.headers["location"], client, headers, video)


async def tile_after_approval(
    base_url: str,
    client: httpx.AsyncClient,
    room: str,
    anchor_token: str,
    viewer: ProgramViewer,
    *,
    colour: str,
    tone: float,
    at: tuple[float, float],
    viewer_token: str | None = None,
    timeout: float = 20,
) -> tuple[float, Hand, Publisher]:
    """One join: a hand raised (anonymously, or with ``viewer_token``: hands are rate-limited
    per requester), approved by the anchor; seconds from the approval's answer to ``colour``
    at ``at`` in ``viewer``'s program picture."""
    hand = await raise_hand(client, room, f"guest {colour}", viewer_token)
    joining = asyncio.create_task(go_on_stage(base_url, hand, colour, tone))
    await asyncio.sleep(0.2)  # the guest's long-poll is waiting, as a page's would be
    approved_at = await approve(client, room, hand.id, anchor_token)
    hand.marks["approved"] = approved_at
    _, guest = await joining
    deadline = time.monotonic() + timeout
    while viewer.colour_at(*at) != colour:
        if time.monotonic() > deadline:
            await guest.close()
            raise AssertionError(f"no {colour} tile at {at}: {viewer.colour_at(*at)}")
        await asyncio.sleep(0.01)
    return time.monotonic() - approved_at, hand, guest


async def watch_admitted(
    base_url: str, path: str, *, timeout: float = 30, **kw: Any
) -> ProgramViewer:
    """``watch_program``, trying again while the node answers 503 (overloaded: the test
    machine runs other suites) or 409 (not live yet), after its Retry-After, as a player does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await watch_program(base_url, path, **kw)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status not in (409, 503) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(min(2.0, float(exc.response.headers.get("retry-after", "1"))))
