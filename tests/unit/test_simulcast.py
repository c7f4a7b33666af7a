"""Simulcast ingest without sockets: the RFC 8851/8853 offer checks and answer lines, the RID
demultiplexer on synthetic RTP with header extensions (through aiortc's own receive path into
the ingest tap), layer liveness, and which layer feeds which output."""

from __future__ import annotations

import asyncio
import re
import struct
import time
from dataclasses import dataclass

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from gateway.mixer.layout import LayoutSpec
from gateway.mixer.specs import RenditionSpec
from gateway.stage.anchor_hub import AnchorHub
from gateway.stage.director import MixerConfig, ProgramDirector
from relay.errors import BadSdp, Unprocessable
from relay.media.frames import CodecSpec, EncodedFrame, MediaKind
from relay.media.hub import FanoutHub
from relay.media.simulcast import LayerOutputs, RidDemux, SimulcastLayers
from relay.media.stream_key import StreamKey
from relay.rtc.ingest import SimulcastIngest
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.rtc.sdp import (
    REPAIRED_RTP_STREAM_ID,
    RTP_STREAM_ID,
    check_offer,
    with_simulcast,
)
from tests.support.offers import fixture

OFFER = "chromium_simulcast.sdp"


def edit(old: str, new: str, count: int = 1) -> str:
    text = fixture(OFFER)
    assert old in text, old
    return text.replace(old, new, count)


# -- offers -------------------------------------------------------------------------------------
def test_chromium_simulcast_offer_is_read() -> None:
    summary = check_offer(fixture(OFFER), "publish")
    sim = summary.simulcast
    assert sim is not None and sim.rids == ("q", "h", "f")
    assert (10, RTP_STREAM_ID) in sim.extensions and (11, REPAIRED_RTP_STREAM_ID) in sim.extensions
    assert check_offer(fixture("chromium_whip.sdp"), "publish").simulcast is None


def test_paused_layers_and_lone_rids() -> None:
    sim = check_offer(edit("send q;h;f", "send ~q;h;f"), "publish").simulcast
    assert sim is not None and sim.rids == ("q", "h", "f")  # a paused layer is still a layer
    lone = re.sub(r"a=simulcast:[^\r\n]*\r\n", "", fixture(OFFER))
    assert check_offer(lone, "publish").simulcast is None  # rids restricting one stream


BAD = {
    "unknown rid": (edit("send q;h;f", "send q;h;x"), BadSdp),
    "rid declared for recv": (edit("a=rid:f send", "a=rid:f recv"), BadSdp),
    "duplicate a=rid": (edit("a=rid:h send", "a=rid:q send"), BadSdp),
    "duplicate in the list": (edit("send q;h;f", "send q;h;q"), BadSdp),
    "four layers": (
        edit("a=simulcast:send q;h;f", "a=rid:g send\r\na=simulcast:send q;h;f;g"),
        Unprocessable,
    ),
    "rid syntax": (edit("a=rid:q send", "a=rid:q! send"), BadSdp),
    "rid too long": (edit("a=rid:q send", "a=rid:" + "q" * 17 + " send"), BadSdp),
    "rid direction": (edit("a=rid:q send", "a=rid:q sideways"), BadSdp),
    "rid restriction": (edit("a=rid:q send", "a=rid:q send max-width=;"), BadSdp),
    "rid unknown pt": (edit("a=rid:q send", "a=rid:q send pt=55"), BadSdp),
    "rid extra fields": (edit("a=rid:q send", "a=rid:q send pt=96 x"), BadSdp),
    "simulcast syntax": (edit("a=simulcast:send q;h;f", "a=simulcast:q;h;f"), BadSdp),
    "simulcast empty rid": (edit("send q;h;f", "send q;;f"), BadSdp),
    "two simulcast lines": (
        edit("a=simulcast:send q;h;f", "a=simulcast:send q\r\na=simulcast:send h"),
        BadSdp,
    ),
    "alternatives": (edit("send q;h;f", "send q,h;f"), Unprocessable),
    "recv part": (edit("send q;h;f", "send q;h;f recv x"), Unprocessable),
    "no rtp-stream-id extension": (
        edit("a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n", ""),
        Unprocessable,
    ),
    "simulcast on audio": (
        edit(
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
            "a=rid:a send\r\na=simulcast:send a\r\n",
        ),
        Unprocessable,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_simulcast_offers_refused(case: str) -> None:
    text, error = BAD[case]
    with pytest.raises(error) as info:
        check_offer(text, "publish")
    assert type(info.value) is error  # BadSdp is a 400, Unprocessable a 422


def test_rid_restriction_values() -> None:
    ok = edit("a=rid:q send", "a=rid:q send pt=96;max-width=320;max-height=180")
    assert check_offer(ok, "publish").simulcast is not None


def test_simulcast_offer_to_a_viewer_is_refused() -> None:
    text = fixture(OFFER).replace("a=sendonly", "a=recvonly")
    with pytest.raises(Unprocessable):
        check_offer(text, "view")


def test_answer_names_the_layers_in_the_video_section() -> None:
    sim = check_offer(fixture(OFFER), "publish").simulcast
    answer = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"
    out = with_simulcast(answer, sim)
    audio, video = out.split("m=video")
    assert "a=rid" not in audio and "a=simulcast" not in audio
    assert video.endswith(
        "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n"
    )
    assert with_simulcast(answer, None) == answer


# -- demux --------------------------------------------------------------------------------------
def test_rid_demux_learns_ssrcs() -> None:
    demux = RidDemux(("q", "h", "f"))
    assert demux.layer(1, None) is None  # an SSRC never named
    assert demux.layer(1, "q") == "q" and demux.layer(2, "f") == "f"
    assert demux.layer(1, None) == "q" and demux.layer(2, None) == "f"  # extension dropped
    assert demux.layer(3, "x") is None  # not a rid of the offer
    assert demux.layer(4, "q") == "q"  # the layer's SSRC changed
    assert demux.layer(1, None) is None and demux.ssrc("q") == 4
    assert demux.unrouted == 3


VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)
SSRC = {"q": 1000, "h": 2000, "f": 3000}
RTX_SSRC = {"q": 1001, "h": 2001, "f": 3001}
SIZE = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
EXTENSIONS = [
    RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=10, uri=RTP_STREAM_ID),
    RTCRtpHeaderExtensionParameters(id=11, uri=REPAIRED_RTP_STREAM_ID),
]


def vp8_payload(rid: str, keyframe: bool) -> bytes:
    """One-packet VP8 frame: payload descriptor (S=1) and a keyframe header carrying the
    layer's size (or an interframe tag)."""
    if not keyframe:
        return b"\x10" + b"\x01\x00\x00" + bytes(20)
    w, h = SIZE[rid]
    return b"\x10" + b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", w, h) + bytes(20)


def wire(
    ext_map: HeaderExtensionsMap,
    *,
    ssrc: int,
    seq: int,
    payload: bytes,
    rid: str | None = None,
    repaired: str | None = None,
    pt: int = 96,
) -> RtpPacket:
    """A packet as the wire carries it (header extensions serialised) and aiortc parses it."""
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 3000, ssrc=ssrc)
    packet.marker = 1
    packet.extensions.mid = "1"
    packet.extensions.rtp_stream_id = rid
    packet.extensions.repaired_rtp_stream_id = repaired
    packet.payload = payload
    return RtpPacket.parse(packet.serialize(ext_map), ext_map)


def hubs(n: int, clock: list[float]) -> list[FanoutHub]:
    codecs: dict[MediaKind, CodecSpec] = {"video": CodecSpec("video", "VP8", 90000)}
    return [
        FanoutHub(StreamKey("r", rendition=f"r{i}" if i else None), codecs, clock=lambda: clock[0])
        for i in range(n)
    ]


async def test_ingest_demuxes_layers_through_aiortcs_receive_path() -> None:
    """Synthetic RTP of three interleaved layers, rids in the header extension on the first
    packets only (as Chromium stops sending them), one layer's loss repaired over RTX named by
    repaired-rtp-stream-id: each layer reaches its own output, NACKs stay per SSRC, and a
    keyframe request of an output names that output's layer."""
    pc = RTCPeerConnection(rtc_configuration(()))
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    hub_clock = [0.0]
    outputs = LayerOutputs(SimulcastLayers(("q", "h", "f")), hubs(3, hub_clock))
    ingest = SimulcastIngest(receiver, outputs)
    asked: list[str] = []
    outputs.requester = asked.append
    params = RTCRtpReceiveParameters(codecs=[VP8, RTX], headerExtensions=EXTENSIONS, muxId="1")
    ext_map = HeaderExtensionsMap()
    ext_map.configure(params)
    receiver._track = RemoteStreamTrack(kind="video")  # what setRemoteDescription makes
    await receiver.receive(params)
    try:
        for n in range(30):
            for rid in ("q", "h", "f"):
                if rid == "h" and n == 12:
                    continue  # lost, repaired below
                rid_ext = rid if n < 5 else None
                packet = wire(
                    ext_map,
                    ssrc=SSRC[rid],
                    seq=100 + n,
                    payload=vp8_payload(rid, n in (0, 15)),  # 15: the PLIs answered
                    rid=rid_ext,
                )
                await receiver._handle_rtp_packet(packet, arrival_time_ms=n * 33)
            if n == 13:  # RTX of h's lost packet: OSN + payload, on an SSRC nobody signalled
                rtx = wire(
                    ext_map,
                    ssrc=RTX_SSRC["h"],
                    seq=7,
                    pt=97,
                    payload=struct.pack("!H", 112) + vp8_payload("h", False),
                    repaired="h",
                )
                await receiver._handle_rtp_packet(rtx, arrival_time_ms=n * 33)
        assert ingest.demux.unrouted == 0
        assert outputs.sources == ["f", "h", "q"]  # ranked by the keyframes' sizes
        for hub, rid in zip(outputs.hubs, ("f", "h", "q"), strict=True):
            assert hub.picture_size == SIZE[rid]
            # all 30 of its own (h's lost one came back over RTX), after a lower layer's
            # keyframes while the sizes were not all known yet
            assert 30 <= hub.stats.frames_in <= 32, rid
        assert ingest.packets_lost == 0
        nacks = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        assert not nacks.missing  # one sequence space per SSRC: nothing falsely missing
        states = outputs.layers.snapshot(time.monotonic())
        assert [s.rid for s in states] == ["f", "h", "q"]
        assert [s.ssrc for s in states] == [SSRC["f"], SSRC["h"], SSRC["q"]]
        assert asked  # outputs were re-pointed as the sizes became known: keyframes asked for
        asked.clear()
        hub_clock[0] = 10.0  # past the hubs' coalescing of those
        outputs.hubs[2].request_keyframe()
        outputs.hubs[0].request_keyframe()
        assert asked == ["q", "f"]
        assert ingest.demux.ssrc("q") == SSRC["q"]  # the PLI's media SSRC
    finally:
        await receiver.stop()
        await close_quietly(pc)
        await asyncio.sleep(0)


# -- layers -------------------------------------------------------------------------------------
def frame(rid: str, now: float, keyframe: bool = False) -> EncodedFrame:
    data = vp8_payload(rid, keyframe)[1:]
    return EncodedFrame("video", "VP8", int(now * 90000), (data,), data, keyframe, now)


def feed(outputs: LayerOutputs, rids: tuple[str, ...], now: float, keyframe: bool = False) -> None:
    for rid in rids:
        outputs.packet(rid, now)
        outputs.publish(rid, frame(rid, now, keyframe))


def test_a_stopped_layer_moves_its_output_down_and_back() -> None:
    clock = [0.0]
    outputs = LayerOutputs(SimulcastLayers(("q", "h", "f"), stale_after=0.5), hubs(3, clock))
    asked: list[str] = []
    outputs.requester = asked.append
    t = 0.0
    feed(outputs, ("q", "h", "f"), t, keyframe=True)
    assert outputs.sources == ["f", "h", "q"]
    started = outputs.switches  # (sizes learnt one keyframe at a time)
    for _ in range(10):
        t += 1 / 30
        feed(outputs, ("q", "h", "f"), t)
    # the browser drops its top layer: after stale_after, output 0 carries h
    while t < 1.0:
        t += 1 / 30
        feed(outputs, ("q", "h"), t)
        if outputs.sources[0] == "h":
            break
    assert outputs.sources == ["h", "h", "q"]
    assert 0.5 < t - 10 / 30 <= 0.5 + 0.1 + 1 / 30  # stale_after, checked every 0.1 s
    snap = {s.rid: s for s in outputs.layers.snapshot(t)}
    assert not snap["f"].live and snap["h"].feeds == (0, 1) and snap["q"].feeds == (2,)
    # f sends again: not before its keyframe (a decoder could not start on the rest)
    t += 1 / 30
    feed(outputs, ("q", "h", "f"), t)
    assert outputs.sources[0] == "h"
    t += 1 / 30
    feed(outputs, ("f",), t, keyframe=True)
    assert outputs.sources == ["f", "h", "q"] and outputs.switches == started + 2
    # only the bottom layer left: every output carries it
    for _ in range(30):
        t += 1 / 30
        feed(outputs, ("q",), t)
    assert outputs.sources == ["q", "q", "q"]


def test_outputs_before_any_sizes_and_the_lowest_first() -> None:
    """A browser starts with its lowest layers (its estimate ramps up): the outputs carry what
    there is, and each gets its own layer once that one arrives."""
    outputs = LayerOutputs(SimulcastLayers(("q", "h", "f")), hubs(3, [0.0]))
    feed(outputs, ("q",), 0.0, keyframe=True)
    assert outputs.sources == ["q", "q", "q"]
    feed(outputs, ("h",), 0.01, keyframe=True)
    assert outputs.sources == ["h", "q", "q"]
    feed(outputs, ("f",), 0.02, keyframe=True)
    assert outputs.sources == ["f", "h", "q"]
    assert [s.width for s in outputs.layers.snapshot(0.03)] == [1280, 640, 320]


def test_a_layer_back_after_a_gap_is_asked_for_its_keyframe() -> None:
    """Packets of a layer that paused (or of one that has not sent a keyframe yet) ask for
    that layer's keyframe, at most once per interval: until one comes it feeds nobody."""
    outputs = LayerOutputs(
        SimulcastLayers(("q", "h"), stale_after=0.5), hubs(2, [0.0]), keyframe_interval=0.25
    )
    asked: list[str] = []
    outputs.requester = asked.append
    feed(outputs, ("q", "h"), 0.0, keyframe=True)
    assert set(asked) == {"q", "h"}  # their first packets (and output 0 moving to h)
    asked.clear()
    for i in range(1, 10):
        feed(outputs, ("q", "h"), i / 30)
    assert asked == []  # both live
    t = 10 / 30
    while t < 2.0:  # h silent for 1.7 s, q goes on
        feed(outputs, ("q",), t)
        t += 1 / 30
    t = 2.0  # h's interframes come again
    for i in range(12):
        feed(outputs, ("q", "h"), t + i / 30)
    # q once, as output 0 moved down to it; then h at 2.0 and 2.27 (0.25 s apart)
    assert asked == ["q", "h", "h"]
    assert outputs.sources == ["q", "q"]  # h feeds nothing until its keyframe
    feed(outputs, ("h",), t + 0.5, keyframe=True)
    assert outputs.sources == ["h", "q"]


# -- the room's program -------------------------------------------------------------------------
@dataclass(eq=False)
class Feed:
    """A simulcast anchor as the director sees it: its layer hubs (highest first)."""

    id: str
    layers: tuple[AnchorHub, ...]
    asked: int = 0

    @property
    def hub(self) -> AnchorHub:
        return self.layers[0]

    def request_keyframe(self) -> None:
        self.asked += 1


def test_passthrough_puts_each_layer_on_its_rendition_and_follows_switches() -> None:
    codecs: dict[MediaKind, CodecSpec] = {"video": CodecSpec("video", "VP8", 90000)}
    config = MixerConfig(renditions=(RenditionSpec("720p", 1280, 720, 2_000_000),))
    program = {
        name: FanoutHub(StreamKey("r", rendition=None if name == "720p" else name), codecs)
        for name in ("720p", "360p")
    }
    director = ProgramDirector("r", program, config, LayoutSpec, dict)
    director.add_layer_hubs(["180p"], lambda n: FanoutHub(StreamKey("r", rendition=n), codecs))
    assert list(director.hubs) == ["720p", "360p", "180p"]
    feed = Feed("a", tuple(AnchorHub(StreamKey("r", anchor="a"), codecs) for _ in range(3)))
    director.update([feed])
    assert director.mode == "passthrough" and director.lone is feed
    for j, layer in enumerate(feed.layers):
        layer.attach_source(lambda: None)
        layer.publish(frame(("f", "h", "q")[j], 0.0, keyframe=True))
    sizes = [hub.picture_size for hub in director.hubs.values()]
    assert sizes == [SIZE["f"], SIZE["h"], SIZE["q"]]
    # the top layer's output switched sources (its layer stopped): its rendition rebases too
    before = director.main.sources
    feed.layers[0].attach_source(lambda: None)
    assert director.main.sources == before + 1
    assert director.hubs["360p"].sources == 1
    # a single-stream anchor replaces it: every rendition carries that stream
    single = Feed("b", (AnchorHub(StreamKey("r", anchor="b"), codecs),))
    director.update([single])
    single.hub.publish(frame("f", 1.0, keyframe=True))
    assert all(hub.stats.frames_in == 2 for hub in director.hubs.values())
    assert feed.layers[1].sink is None and feed.layers[0].on_source is None  # untapped


def test_simulcast_hooks_internals_exist() -> None:
    """What ``keep_header_extensions`` and ``install_simulcast_receive`` reach in aiortc: the
    transceiver's negotiated extensions (answer and receive parameters are built from them),
    the receiver's NACK generator, RTX map and codecs on its receive path."""
    from aiortc import RTCPeerConnection as PC
    from aiortc import RTCRtpReceiver

    from tests.unit.test_aiortc_adapter import names_of

    code = names_of(
        PC.setRemoteDescription,
        PC.createAnswer,
        PC._RTCPeerConnection__remoteRtp,  # type: ignore[attr-defined]
    )
    assert "_headerExtensions" in code
    receive = names_of(RTCRtpReceiver._handle_rtp_packet)
    for name in ("_RTCRtpReceiver__nack_generator", "_RTCRtpReceiver__rtx_ssrc", "missing"):
        assert name in receive, name
