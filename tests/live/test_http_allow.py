"""RFC 9110 method discovery on the WHIP/WHEP resources: OPTIONS and 405 answers say what the
resource allows (a client such as Eyevinn's whip-web-client decides on trickle ICE from the
methods the endpoint's OPTIONS lists); a PATCH without If-Match is told so by name."""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import RunningServer

SDP = {"Content-Type": "application/sdp"}


def methods(value: str) -> set[str]:
    return {m.strip() for m in value.split(",") if m.strip()}


async def make_offer() -> str:
    from aiortc import RTCPeerConnection

    from relay.rtc.peer import close_quietly, rtc_configuration

    pc = RTCPeerConnection(rtc_configuration(()))
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await close_quietly(pc)
    return sdp


@pytest.mark.timeout(30)
async def test_options_and_405_list_the_allowed_methods(server: RunningServer) -> None:
    preflight = {"Origin": "http://page.test", "Access-Control-Request-Method": "POST"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        whip = await c.options("/whip/r", headers=preflight)
        assert whip.status_code == 204
        assert methods(whip.headers["allow"]) == {"POST", "OPTIONS"}
        assert whip.headers["accept-post"] == "application/sdp"
        # the CORS answer also covers the session resources under the endpoint; clients read
        # PATCH there as "trickle ICE supported"
        assert {"POST", "PATCH", "DELETE"} <= methods(whip.headers["access-control-allow-methods"])
        # a plain OPTIONS (not a preflight) says the same
        assert methods((await c.options("/whip/r")).headers["allow"]) == {"POST", "OPTIONS"}
        whep = await c.options("/whep/r", headers=preflight)
        assert methods(whep.headers["allow"]) == {"POST", "HEAD", "OPTIONS"}
        assert whep.headers["accept-post"] == "application/sdp"
        assert "PATCH" in methods(whep.headers["access-control-allow-methods"])
        for prefix in ("/whip/r/some-session", "/whep/r/some-session"):
            session = await c.options(prefix, headers=preflight)
            assert methods(session.headers["allow"]) == {"PATCH", "DELETE", "OPTIONS"}
            assert session.headers["accept-patch"] == "application/trickle-ice-sdpfrag"
        # 405 answers list every method of the resource, not those of the first route found
        for method, path, allowed in (
            ("GET", "/whip/r", {"POST", "OPTIONS"}),
            ("GET", "/whep/r", {"POST", "HEAD", "OPTIONS"}),
            ("PUT", "/whip/r/s", {"PATCH", "DELETE", "OPTIONS"}),
            ("PUT", "/whep/r/s", {"PATCH", "DELETE", "OPTIONS"}),
            ("PUT", "/v1/rooms", {"GET", "POST"}),
        ):
            resp = await c.request(method, path)
            assert resp.status_code == 405, (method, path, resp.text)
            assert methods(resp.headers["allow"]) == allowed, (method, path)
            assert resp.headers["content-type"].startswith("application/problem+json")


@pytest.mark.timeout(30)
async def test_patch_with_etag_instead_of_if_match_names_the_missing_header(
    server: RunningServer,
) -> None:
    tok = {"Authorization": f"Bearer {server.anchor_token('etag')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        resp = await c.post("/whip/etag", content=await make_offer(), headers={**SDP, **tok})
        assert resp.status_code == 201, resp.text
        location, etag = resp.headers["location"], resp.headers["etag"]
        frag = "a=ice-ufrag:x\na=ice-pwd:y\nm=video 9 UDP/TLS/RTP/SAVPF 0\na=mid:0\n"
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag", **tok}
        # what @eyevinn/whip-web-client sends: the entity tag in an ETag request header
        wrong = await c.patch(location, content=frag, headers={**trickle, "ETag": etag})
        assert wrong.status_code == 428, wrong.text
        detail = wrong.json()["detail"]
        assert "If-Match header" in detail and "ETag header" in detail, detail
        plain = await c.patch(location, content=frag, headers=trickle)
        assert plain.status_code == 428
        assert "If-Match header" in plain.json()["detail"]
        assert "ETag header" not in plain.json()["detail"]
        assert (await c.delete(location, headers=tok)).status_code == 200
