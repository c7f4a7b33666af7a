"""Audience sessions (WHEP): one sendonly peer connection per viewer, fed by a hub."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCRtpSender

from relay.auth.access import Grant
from relay.auth.tokens import LINK_SUBJECT_PREFIX
from relay.auth.turn import NodeIce
from relay.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from relay.media.cc_feedback import TRANSPORT_CC_URIS
from relay.media.estimator import (
    NO_ESTIMATE,
    BandwidthEstimate,
    BandwidthEstimator,
    take_rtcp,
)
from relay.media.frames import MediaKind
from relay.media.hub import FanoutHub, Viewer
from relay.media.keyframe_gate import KeyframeGate
from relay.media.layer_selector import (
    Layer,
    LayerSelector,
    LinkEstimate,
    ReportEstimate,
    SelectorConfig,
    Switch,
)
from relay.media.lifecycle import SessionLifecycle
from relay.media.nack_solicit import EVERY
from relay.media.playout_delay import PLAYOUT_DELAY_URI, PlayoutDelayLimits
from relay.media.retransmit import RetransmitLimits, Verdict
from relay.media.stream_key import StreamKey
from relay.media.viewer_queue import ViewerQueue
from relay.rtc.adapter import (
    FeedbackLane,
    accept_audio_red,
    accept_header_extension,
    accept_red_ulpfec,
    accept_transport_cc,
    drop_receive_estimator,
    install_prepacked_sender,
    tap_rtcp,
    tap_transport_feedback,
)
from relay.rtc.candidates import DEFAULT_POLICY, CandidatePolicy
from relay.rtc.certificates import DEFAULT_LIFETIME, RotatingCertificate
from relay.rtc.direct_sender import DirectSender, new_template_cache
from relay.rtc.join_queue import (
    CONNECT_HOLD,
    DEFAULT_CONCURRENCY,
    DEFAULT_GIVE_UP,
    DEFAULT_MAX_CONNECTING,
    DEFAULT_MAX_WAIT,
    JoinQueue,
    JoinTicket,
)
from relay.rtc.lifecycle import PeerLifecycle
from relay.rtc.peer import (
    answer_offer,
    apply_trickle,
    close_quietly,
    codec_preferences,
)
from relay.rtc.probe_sender import ProbeSender
from relay.rtc.sdp import OfferSummary, TrickleFragment, check_offer, strip_mdns_candidates
from relay.rtc.session_ids import new_etag, new_session_id
from relay.rtc.tracks import HubTrack
from relay.rtc.transport import NodeTransport, TransportConfig

log = logging.getLogger(__name__)

# (the stream asked for, the requester's token subject or None for a liveness probe) -> its hub
# or None when it is not live; may raise (NotFound: no such stream, Forbidden: not yours)
HubLookup = Callable[[StreamKey, str | None], FanoutHub | None]


@dataclass(frozen=True, slots=True)
class LadderLayer:
    """One layer a viewer may be moved to: a rendition's (or simulcast layer's) hub and its
    nominal bitrate (bits/s, video + audio; None: measured from the hub)."""

    name: str
    hub: FanoutHub
    nominal_bps: int | None = None


# (room, the hub a viewer is on) -> the ladder that hub is a layer of, top first; empty when
# there is nothing to switch between (an anchor's own stream, a passthrough room)
LayerLookup = Callable[[str, FanoutHub], Sequence[LadderLayer]]

REPORT_TICK = 0.25  # s between two walks of the viewers for sender reports that are due
REPORT_INTERVAL = (0.5, 1.5)  # s from one viewer's sender reports to its next (RFC 3550's spread)
LAYER_STALE = 1.0  # s without a new picture: the layer is not live (its viewers move away)
SWITCH_TIMEOUT = 2.0  # s a switch waits for the target's keyframe (then: down hard, up abandoned)
ADAPT_INTERVAL = 0.5  # s between two looks at every viewer's link


def layer_bitrate(layer: LadderLayer, now: float) -> int:
    """What a layer sends: measured while someone takes it (a nominal rate is a ceiling that
    easy pictures stay under), its nominal rate while nobody does (a mixer does not encode it)."""
    hub = layer.hub
    if hub.wanted or layer.nominal_bps is None:
        measured = int(sum(m.rates(now)[1] for m in hub.meters.values()))
        if measured > 0 or layer.nominal_bps is None:
            return measured
    return layer.nominal_bps


def layer_live(hub: FanoutHub, freshest: float) -> bool:
    """Whether a layer still has pictures: judged against the ladder's freshest layer, so a
    stall of the whole source (a busy mixer) moves nobody. A layer nobody takes may not be
    made at all (the mixer encodes only what is taken): live while it has a source, and once
    taken, its source has ``LAYER_STALE`` from then to make its first picture (a viewer
    pinned to a rendition nobody watched was judged gone at once and moved to the main one
    whenever the mixer's first frame of it came after a look at the ladder: on a loaded
    machine; a switch to such a layer was abandoned the same way)."""
    if hub.closed.is_set():
        return False
    seen = hub.last_video_at
    taken = hub.taken_at
    if hub.wanted and taken is not None and (seen is None or taken > seen):
        seen = taken
    if seen is not None and freshest - seen < LAYER_STALE:
        return True
    return not hub.wanted and hub.sources > 0 and hub.source_lost_at is None


@dataclass(frozen=True, slots=True)
class ViewerLimits:
    connect_timeout: float = 15.0  # a viewer that never connects is reaped after this
    retry_after: int = 2  # seconds a client should wait when nothing is live
    max_viewers: int | None = None  # this node's capacity; beyond it: 503 + Retry-After
    direct: bool = True  # RTP-level forwarding (DirectSender); False: aiortc's sender task
    native: bool = True  # the direct sender's send loop in C when built (relay/rtc/srtp_writer.py)
    candidates: CandidatePolicy = DEFAULT_POLICY  # remote ICE candidates a viewer may give
    certificate_lifetime: float = DEFAULT_LIFETIME  # s one DTLS certificate serves every viewer
    retransmit: RetransmitLimits = field(default_factory=RetransmitLimits)
    keyframe_backoff: float = 8.0
    """Longest wait between two keyframe requests of one viewer that keeps asking (0: no
    per-viewer backoff, only the hub's coalescing)."""
    join_concurrency: int = DEFAULT_CONCURRENCY
    """Joins answered at once (relay.rtc.join_queue); the others wait in line."""
    join_max_connecting: int = DEFAULT_MAX_CONNECTING
    """Answered joins still connecting (ICE, DTLS) at once; a new turn waits for a place."""
    join_max_wait: float = DEFAULT_MAX_WAIT
    """Seconds a join may be expected to wait in line when it arrives; beyond, 503."""
    join_give_up: float = DEFAULT_GIVE_UP
    """Seconds a join waits in line at most; then 503 + Retry-After (its client gives up)."""
    transport_cc: bool = True
    """Answer transport-cc (the transport-wide sequence number extension and its feedback)
    when a viewer offers it: the best source of its bandwidth estimate (direct sending only)."""
    probing: bool = True
    """Probe a transport-cc viewer below the top layer for headroom (``relay/media/probe.py``)."""
    fec: bool = False
    """Answer red + ulpfec where a viewer offers both and send it ULPFEC parity while it loses
    packets (``relay/rtc/fec_sender.py``; direct sending only)."""
    audio_red: int = 2
    """Earlier audio payloads each audio packet carries for a viewer that offers Opus in RED
    (``relay/media/audio_red.py``; direct sending only); 0: no RED."""
    audio_red_on_loss: bool = True
    """Those copies only while the viewer loses packets, as many as its estimate has room for."""
    estimation: bool = True
    """A bandwidth estimator and a layer selector per viewer (direct sending only); off: neither
    (the baseline for their cost)."""
    nack_solicit: bool = True
    """Make a viewer without transport-cc that NACKs a hole once (aiortc) send its missing list
    again every 0.1 s while it asks for repairs (``relay/media/nack_solicit.py``)."""
    nack_solicit_lossy: float = EVERY
    """Seconds between those while it asks for 3 % or more of its packets (0: every frame)."""
    feedback_repair: bool = True
    """Resend a transport-cc viewer's media packets that its feedback reports lost and no NACK
    asked for (its NACK was lost): ``relay/media/feedback_repair.py`` (counted either way)."""
    playout_delay: PlayoutDelayLimits = field(default_factory=PlayoutDelayLimits)
    """The playout-delay extension: answered when a viewer offers it (Chromium), a minimum
    playout delay of one repair round while the viewer asks for repairs (direct sending only)."""


@dataclass(slots=True)
class EgressTotals:
    """Node-wide egress counters, monotonic: finished viewers are folded in when they leave."""

    sessions: int = 0
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    nacks: int = 0
    nacked_packets: int = 0
    retransmissions: int = 0
    rtx_bytes: int = 0
    rtx_late: int = 0
    rtx_over_budget: int = 0
    feedback_unasked: int = 0  # media packets lost per transport-cc feedback, never NACKed
    feedback_repairs: int = 0  # of them, resent (relay/media/feedback_repair.py)
    fec_packets: int = 0  # ULPFEC parity packets sent (relay/rtc/fec_sender.py)
    fec_bytes: int = 0
    keyframe_requests: int = 0
    keyframe_requests_suppressed: int = 0
    transport_feedbacks: int = 0  # transport-cc feedback packets taken by estimators
    rembs: int = 0
    feedback_malformed: int = 0

    def add_viewer(
        self,
        viewer: Viewer,
        senders: Iterable[DirectSender] = (),
        gate: KeyframeGate | None = None,
        estimator: BandwidthEstimator | None = None,
    ) -> None:
        for q in viewer.queues.values():
            self.frames += q.sent
            self.packets += q.sent_packets
            self.bytes += q.sent_bytes
            self.dropped += q.dropped
        for s in senders:
            self.nacks += s.nacks
            self.nacked_packets += s.nacked_packets
            self.retransmissions += s.retransmissions
            self.rtx_bytes += s.rtx_bytes
            self.rtx_late += s.budget.refused[Verdict.LATE]
            self.rtx_over_budget += s.budget.refused[Verdict.OVER_BUDGET]
            self.keyframe_requests += s.keyframe_requests
            self.feedback_repairs += s.repairs
            if s.repair is not None:
                self.feedback_unasked += s.repair.unasked
            if s.fec is not None:
                self.fec_packets += s.fec.packets
                self.fec_bytes += s.fec.octets
        if gate is not None:
            self.keyframe_requests_suppressed += gate.suppressed
        if estimator is not None:
            self.transport_feedbacks += estimator.feedbacks
            self.rembs += estimator.rembs
            self.feedback_malformed += estimator.malformed


@dataclass(eq=False)
class ViewerSession:
    id: str
    room: str
    grant: Grant
    pc: RTCPeerConnection
    hub: FanoutHub
    viewer: Viewer
    etag: str
    life: PeerLifecycle  # connect timeout (a viewer that never connects is reaped), end
    senders: dict[MediaKind, DirectSender] = field(default_factory=dict)
    keyframe_gate: KeyframeGate | None = None  # the viewer's own PLI/FIR backoff
    pin: str | None = None  # the layer the viewer asked to keep (?layer= / ?rendition=)
    selector: LayerSelector | None = None  # once the viewer's hub is found in a ladder
    switch_started: float | None = None  # a switch waits for the target's keyframe since
    fallbacks: int = 0  # switches down
    step_ups: int = 0  # switches up
    estimator: BandwidthEstimator | None = None  # the viewer's bandwidth (direct sending)
    transport_cc: bool = False  # negotiated with the viewer
    prober: ProbeSender | None = None  # probe clusters (transport-cc, RTX, a ladder)
    rtcp_errors: int = 0
    port_feedbacks: int = 0  # transport-cc datagrams taken in the shared port's read (or its lane)
    reports_due: float = 0.0  # when its senders' next reports go (monotonic)
    reports_sent: int = 0
    fec: bool = False  # red + ulpfec negotiated with the viewer
    audio_red: bool = False  # audio RED negotiated with the viewer

    @property
    def layer(self) -> str | None:
        return self.selector.current if self.selector is not None else None

    @property
    def estimate(self) -> BandwidthEstimate:
        """The viewer's current bandwidth estimate (``NO_ESTIMATE`` without direct sending)."""
        estimator = self.estimator
        return NO_ESTIMATE if estimator is None else estimator.snapshot(time.monotonic())

    def on_rtcp_data(self, data: bytes) -> bytes:
        """Every RTCP datagram from the viewer (before aiortc parses it): its transport-cc
        feedback and REMB go to the estimator; returns what aiortc still gets (all but the
        transport-cc packets, which it has no use for). Never raises (the transport's
        receive loop)."""
        estimator = self.estimator
        if estimator is None:
            return data
        try:
            return take_rtcp(estimator, data, time.monotonic(), transport_cc=self.transport_cc)
        except Exception:
            self.rtcp_errors += 1
            if self.rtcp_errors == 1:
                log.exception("viewer %s: RTCP feedback not understood", self.id)
            return data

    def count_port_feedbacks(self, feedbacks: int) -> None:
        """Lone feedback datagrams the port's feedback lane took into the estimator (counted
        once a second: relay/rtc/adapter.py, ``_feedback_lane``)."""
        self.port_feedbacks += feedbacks

    def on_transport_feedback(self, fcis: tuple[bytes, ...]) -> None:
        """Transport-cc feedback the shared port's read callback split off a datagram (the
        common case; ``on_rtcp_data`` takes the others). Never raises (the port's reader)."""
        estimator = self.estimator
        if estimator is None:
            return
        self.port_feedbacks += 1
        try:
            now = time.monotonic()
            for fci in fcis:
                estimator.on_transport_feedback(fci, now)
        except Exception:
            self.rtcp_errors += 1
            if self.rtcp_errors == 1:
                log.exception("viewer %s: RTCP feedback not understood", self.id)

    @property
    def connected_at(self) -> float | None:
        return self.life.connected_at

    def request_keyframe(self) -> None:
        self.hub.request_keyframe()

    def viewer_asks_keyframe(self) -> None:
        """The viewer sent a PLI/FIR: passed on unless it is asking too often (KeyframeGate)."""
        gate = self.keyframe_gate
        if gate is None or gate.request(time.monotonic()):
            self.hub.request_keyframe()


def link_estimate(session: ViewerSession) -> LinkEstimate | None:
    """What the layer selector reads of a viewer's link: the estimator's snapshot when it
    comes from transport-cc feedback (a delay- and loss-based target); otherwise receiver
    reports' loss and round trip without a target (aiortc's REMB follows what it receives, so
    a target from it would hold a viewer on whatever layer it is on)."""
    estimate = session.estimate
    if estimate.source == "twcc" and estimate.target_bps is not None:
        return estimate
    video = session.senders.get("video")
    if video is None:
        return None
    return ReportEstimate(None, video.fraction_lost, video.round_trip_time())


def _nothing() -> None:
    pass


class ViewerService:
    """Owns every viewer session of this node; created and closed by the app's lifespan."""

    def __init__(
        self,
        lookup: HubLookup,
        *,
        ice_servers: NodeIce = (),
        limits: ViewerLimits | None = None,
        room_limit: Callable[[str], int | None] | None = None,
        layers: LayerLookup | None = None,
        selector: SelectorConfig | None = None,
        estimates: Callable[[ViewerSession], LinkEstimate | None] | None = None,
        overloaded: Callable[[], bool] | None = None,
        transport: NodeTransport | None = None,
    ) -> None:
        self._lookup = lookup
        self._transport = transport or NodeTransport(TransportConfig(ice_servers=ice_servers))
        self._room_limit = room_limit or (lambda room: None)
        self.limits = limits or ViewerLimits()
        self.sessions: dict[str, ViewerSession] = {}
        self.finished = EgressTotals()
        self._templates = new_template_cache()
        self._layers = layers
        self._selector_config = selector or SelectorConfig()
        self._estimates = estimates or link_estimate
        self._overloaded = overloaded or (lambda: False)
        self.switches_up = 0  # node-wide, monotonic
        self.switches_down = 0
        self._monitor: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._jitter = random.Random()
        self.certificate = RotatingCertificate(self.limits.certificate_lifetime)
        self.joins = JoinQueue(
            self.limits.join_concurrency,
            self.limits.join_max_wait,
            max_connecting=self.limits.join_max_connecting,
            give_up=self.limits.join_give_up,
            retry_after=self.limits.retry_after,
        )

    def egress(self) -> EgressTotals:
        """Totals so far, live viewers included."""
        f = self.finished
        total = dataclasses.replace(f)
        for s in self.sessions.values():
            total.add_viewer(s.viewer, s.senders.values(), s.keyframe_gate, s.estimator)
        return total

    def count(self, room: str | None = None, *, audience_only: bool = False) -> int:
        """Viewer sessions (of ``room``); ``audience_only`` leaves out other nodes' pulls."""
        return sum(
            1
            for s in self.sessions.values()
            if (room is None or s.room == room)
            and not (audience_only and s.grant.subject.startswith(LINK_SUBJECT_PREFIX))
        )

    def live_hub(self, key: StreamKey, subject: str | None = None) -> FanoutHub:
        hub = self._lookup(key, subject)
        if hub is None or hub.closed.is_set():
            raise Conflict(f"room {key.room!r} is not live", retry_after=self.limits.retry_after)
        return hub

    def _admit(self, room: str, grant: Grant, *, overload: bool = True) -> None:
        """Capacity checks (``overload``: also refuse while the loop is saturated). Another
        node's pull (a relay edge) is exempt from the room's viewer limit (each of its viewers
        is counted where it watches) and from overload refusal (the edge is what takes load
        off this node); the node's own maximum still holds."""
        link = grant.subject.startswith(LINK_SUBJECT_PREFIX)
        if overload and not link and self._overloaded_now():
            raise ServiceUnavailable(
                "this node is overloaded (its event loop is late or near its core)",
                retry_after=self.limits.retry_after,
            )
        node_max = self.limits.max_viewers
        if node_max is not None and len(self.sessions) >= node_max:
            raise ServiceUnavailable("this node is full", retry_after=self.limits.retry_after)
        room_max = None if link else self._room_limit(room)
        if room_max is not None and self.count(room, audience_only=True) >= room_max:
            raise ServiceUnavailable(
                f"room {room!r} has its maximum of {room_max} viewers",
                retry_after=self.limits.retry_after,
            )

    def _overloaded_now(self) -> bool:
        """A join arriving while no burst is under way is refused by the overload guard (the
        loop late, or near its core: the node is at its capacity). During a burst (joins taken
        in turns) the burst's own work is what keeps the loop busy: the join waits in line
        instead, and the line's places are what protect the viewers already watching. (A turn
        that also waited for a late loop stalled the line on a loaded machine: the lag monitor
        counts the time the process waits for a core, and 200 joins at load 23 had 50 %
        refused at the give-up while the node used 0.07 core; without that wait, 0 % at load
        11.)"""
        if self.joins.bursting():
            return False
        return self._overloaded()

    async def open(
        self, key: StreamKey, offer_sdp: str, summary: OfferSummary | None, grant: Grant
    ) -> ViewerSession:
        """A viewer's join: capacity checks, a turn in the node's line of joins (the offer is
        checked inside it when ``summary`` is None: in a flash crowd, arriving costs little),
        the answer; the turn's connecting place is held until the viewer connects."""
        room = key.room
        self.live_hub(key, grant.subject)
        self._admit(room, grant)
        link = grant.subject.startswith(LINK_SUBJECT_PREFIX)
        async with self.joins.turn(first=link) as ticket:
            self._admit(room, grant, overload=False)  # the line may have filled the node
            if summary is None:
                summary = check_offer(offer_sdp, "view")
            return await self._open(key, offer_sdp, summary, grant, ticket)

    async def _open(
        self,
        key: StreamKey,
        offer_sdp: str,
        summary: OfferSummary,
        grant: Grant,
        ticket: JoinTicket | None = None,
    ) -> ViewerSession:
        room = key.room
        hub = self.live_hub(key, grant.subject)
        pc = self._transport.peer_connection(self.certificate.current())
        sid = new_session_id()
        direct = self.limits.direct
        viewer = hub.create_viewer(sid, direct=direct)
        timers = SessionLifecycle(time.monotonic(), self.limits.connect_timeout)
        session = ViewerSession(
            sid,
            room,
            grant,
            pc,
            hub,
            viewer,
            new_etag(),
            PeerLifecycle(pc, timers),
            pin=key.rendition,
        )
        if direct and self.limits.estimation:
            session.estimator = BandwidthEstimator()
        try:
            for kind, spec in hub.codecs.items():
                if kind not in summary.codecs:
                    continue
                if not any(n.lower() == spec.name.lower() for n in summary.codecs[kind]):
                    raise Unprocessable(
                        f"the stream's {kind} is {spec.name}, which the offer does not list"
                    )
                track = HubTrack(kind, viewer.queues[kind])
                transceiver = pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences(codec_preferences(kind, spec.name, receiving=False))
                drop_receive_estimator(transceiver.receiver)  # sendonly: nothing to estimate
                if direct:
                    session.senders[kind] = self._direct_sender(
                        session, transceiver.sender, viewer.queues[kind]
                    )
                else:
                    install_prepacked_sender(transceiver.sender, session.request_keyframe)
            if not pc.getTransceivers():
                raise Unprocessable("the offer asks for no kind of media this stream carries")
            await asyncio.sleep(0)  # a turn of the loop for the viewers already watching
            await answer_offer(
                pc,
                strip_mdns_candidates(offer_sdp),
                self.limits.candidates,
                prepare=lambda pc: self._prepare_answer(session, pc),
            )
        except BaseException:
            viewer.close()
            await close_quietly(pc)
            raise
        self.sessions[sid] = session
        if self._layers is not None and session.estimator is not None and self._monitor is None:
            self._monitor = asyncio.create_task(self._adapt(), name="viewer-layers")
        if session.senders and self._reporter is None:
            self._reporter = asyncio.create_task(self._report(), name="viewer-reports")
        # its handshake holds a connecting place of the line until it connects (or goes)
        connected = ticket.connecting(CONNECT_HOLD) if ticket is not None else _nothing

        def on_connected() -> None:
            connected()
            session.hub.attach(session.viewer)

        async def teardown() -> None:
            connected()
            await self._teardown(session)

        # ends when the viewer goes away, never connects, or the stream ends
        session.life.start(
            f"viewer-{sid}",
            teardown,
            on_connected=on_connected,
            ends=[(hub.closed, "stream ended")],
        )
        log.info(
            "viewer %s joined room %s (%d viewers)",
            sid,
            room,
            self.count(room),
            extra={"room": room, "session": sid, "event": "viewer.joined"},
        )
        return session

    async def _prepare_answer(self, session: ViewerSession, pc: RTCPeerConnection) -> None:
        if self.limits.direct and self.limits.playout_delay.enabled:
            accept_header_extension(pc, PLAYOUT_DELAY_URI)
        if self.limits.fec and self.limits.direct:
            session.fec = accept_red_ulpfec(pc)
        if self.limits.audio_red and self.limits.direct:
            session.audio_red = accept_audio_red(pc)
        if session.estimator is not None:
            if self.limits.transport_cc:
                session.transport_cc = accept_transport_cc(pc, TRANSPORT_CC_URIS)
            tap_rtcp(pc, session.on_rtcp_data)  # before the transport's consent hook
            if session.transport_cc:  # its feedback taken in the shared port's read callback
                lane = session.estimator.lane() if self.limits.native else None
                tap_transport_feedback(
                    pc,
                    session.on_transport_feedback,
                    None if lane is None else FeedbackLane(*lane, session.count_port_feedbacks),
                )
        await self._transport.prepare_answer(pc)

    def _direct_sender(
        self, session: ViewerSession, sender: RTCRtpSender, queue: ViewerQueue
    ) -> DirectSender:
        def ready() -> None:
            if not queue.bind(direct.send_frame):
                session.request_keyframe()

        backoff = self.limits.keyframe_backoff
        if backoff > 0 and queue.kind == "video" and session.keyframe_gate is None:
            session.keyframe_gate = KeyframeGate(min(0.5, backoff), backoff)
        direct = DirectSender(
            sender,
            self._templates,
            on_keyframe_request=session.viewer_asks_keyframe,
            on_ready=ready,
            native=self.limits.native,
            retransmit=self.limits.retransmit,
            estimator=session.estimator,
            # the video's receiver reports (the audio's when there is no video)
            reports_to_estimator=queue.kind == "video" or "video" not in session.hub.codecs,
            own_reports=True,  # sent by self._report, one tick for every viewer
            playout_delay=self.limits.playout_delay if queue.kind == "video" else None,
            solicit=self.limits.nack_solicit and queue.kind == "video",
            solicit_lossy_every=self.limits.nack_solicit_lossy,
            feedback_repair=self.limits.feedback_repair if queue.kind == "video" else None,
            fec=self.limits.fec,
            audio_red=self.limits.audio_red if queue.kind == "audio" else 0,
            audio_red_on_loss=self.limits.audio_red_on_loss,
        )
        if (
            queue.kind == "video"
            and session.estimator is not None
            and self.limits.probing
            and self._layers is not None
        ):
            session.prober = ProbeSender(direct, session.estimator, now=time.monotonic())
        return direct

    async def _adapt(self, interval: float = ADAPT_INTERVAL) -> None:
        """Every ``interval``: each viewer's layer selector looks at its link and may move it;
        ends when the last viewer has gone (the next one starts it again)."""
        while True:
            await asyncio.sleep(interval)
            if not self.sessions:
                self._monitor = None
                return
            now = time.monotonic()
            ladders: dict[int, Sequence[LadderLayer]] = {}
            for session in list(self.sessions.values()):
                try:
                    self.adapt(session, now, ladders)
                except Exception:
                    log.exception("layer selection of viewer %s failed", session.id)

    async def _report(self, tick: float = REPORT_TICK) -> None:
        """Every ``tick``: the viewers whose sender reports are due get them, all of a viewer's
        senders in one compound datagram (aiortc ran a task per sender, two per viewer, each
        waking and sending on its own); ends when the last viewer has gone."""
        low, high = REPORT_INTERVAL
        while True:
            await asyncio.sleep(tick)
            if not self.sessions:
                self._reporter = None
                return
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now < session.reports_due or not session.senders:
                    continue
                session.reports_due = now + self._jitter.uniform(low, high)
                try:
                    senders = list(session.senders.values())
                    payload = b"".join(s.sender_report() for s in senders)
                    if senders[0].send_reports(payload):
                        session.reports_sent += 1
                except Exception:
                    log.exception("sender reports of viewer %s failed", session.id)

    def ladder(self, session: ViewerSession) -> Sequence[LadderLayer]:
        if self._layers is None:
            return ()
        return self._layers(session.room, session.hub)

    def adapt(
        self,
        session: ViewerSession,
        now: float,
        ladders: dict[int, Sequence[LadderLayer]] | None = None,
    ) -> None:
        """One look at a viewer's link: start, time out or skip a switch of layer."""
        q = session.viewer.queues.get("video")
        sender = session.senders.get("video")
        if (
            q is None
            or sender is None
            or session.connected_at is None
            or session.grant.subject.startswith(LINK_SUBJECT_PREFIX)  # a node's pull: never
        ):
            return
        cache = ladders if ladders is not None else {}
        key = id(session.hub)
        ladder = cache.get(key)
        if ladder is None:
            ladder = cache[key] = self.ladder(session)
        hubs = {layer.name: layer.hub for layer in ladder}
        selector = session.selector
        if selector is None:
            name = next((x.name for x in ladder if x.hub is session.hub), None)
            if name is None:
                return
            selector = session.selector = LayerSelector(
                name, pinned=session.pin, config=self._selector_config, now=now
            )
        started = session.switch_started
        pending = selector.pending
        if pending is not None and started is not None and now - started > SWITCH_TIMEOUT:
            target = hubs.get(pending.target)
            if target is not None:
                target.cancel_keyframe_call(session.id)
            if pending.down and target is not None:  # freezing anyway: go now
                self._complete_switch(session, pending, target, now, at_keyframe=False)
            else:
                selector.abandoned(now)
                session.switch_started = None
                self._resume(session)
        pending = selector.pending
        freshest = max((x.hub.last_video_at or 0.0 for x in ladder), default=0.0)
        layers = [Layer(x.name, layer_bitrate(x, now), layer_live(x.hub, freshest)) for x in ladder]
        congestion = q.overflows + sender.lossy_reports
        estimate = self._estimates(session)
        prober, probed = session.prober, None
        if prober is not None and pending is None:
            # a probe aims at a layer's nominal rate when it has one: its measured rate may be
            # far below (easy pictures, a starved mixer) and rise the moment it is taken
            nominal = {x.name: x.nominal_bps or 0 for x in ladder}
            live = [x for x in layers if x.live]
            at = next((i for i, x in enumerate(live) if x.name == selector.current), 0)
            higher = [max(x.bitrate, nominal.get(x.name, 0)) for x in live[:at]][::-1]
            prober.tick(now, session.estimate, higher)
            probed = prober.probed(now, len(higher))
        switch = selector.update(
            now, layers, estimate, congestion, probed, clean=sender.clean_reports
        )
        if pending is not None and selector.pending is not pending:  # its target went away
            gone = hubs.get(pending.target)
            if gone is not None:
                gone.cancel_keyframe_call(session.id)
            session.switch_started = None
            self._resume(session)
        if switch is not None and switch.target in hubs:
            self._start_switch(session, switch, hubs[switch.target], now)

    def _start_switch(
        self, session: ViewerSession, switch: Switch, target: FanoutHub, now: float
    ) -> None:
        """Ask the target for a keyframe and keep sending the current layer until it comes:
        the viewer never waits on a gray picture; unless the current layer overruns the link
        (``drain``): its video stops now, so the keyframe finds the bottleneck empty. A gone
        layer is left at once."""
        if switch.urgent:
            self._complete_switch(session, switch, target, now, at_keyframe=False)
            return
        session.switch_started = now
        video = session.viewer.queues.get("video")
        if switch.drain and video is not None:
            video.hold()
        target.call_at_keyframe(
            session.id,
            lambda: self._complete_switch(session, switch, target, time.monotonic()),
        )
        target.request_keyframe()

    def _complete_switch(
        self,
        session: ViewerSession,
        switch: Switch,
        target: FanoutHub,
        now: float,
        *,
        at_keyframe: bool = True,
    ) -> None:
        """Move a viewer to another layer's hub on the same connection: ``at_keyframe`` from
        the target's keyframe callback (that keyframe is its first frame there), otherwise
        (a gone layer, a keyframe that did not come) it waits for the next one."""
        selector = session.selector
        session.switch_started = None
        if selector is None or selector.pending is not switch or session.id not in self.sessions:
            return
        old = session.hub
        if target is old or target.closed.is_set() or not target.compatible(old.codecs):
            selector.abandoned(now)
            self._resume(session)
            return
        old.detach(session.viewer)
        for kind, sender in session.senders.items():
            spec = old.codecs.get(kind)
            if sender.rewriter is not None and spec is not None:
                frame_interval = 30 if kind == "video" else 50  # ~30 fps video, 20 ms audio
                sender.rewriter.continue_timeline(spec.clock_rate // frame_interval)
                sender.budget.new_timeline()
        session.hub = target
        target.attach(session.viewer, keyframe=not at_keyframe)
        selector.switched(now)
        if session.prober is not None:
            session.prober.switched(now, up=not switch.down)
        if switch.down:
            session.fallbacks += 1
            self.switches_down += 1
        else:
            session.step_ups += 1
            self.switches_up += 1
        video = session.senders.get("video")
        log.info(
            "viewer %s %s to %s (%s; last loss %.0f %%)",
            session.id,
            "moved down" if switch.down else "moved up",
            switch.target,
            switch.reason,
            100 * video.fraction_lost if video is not None else 0.0,
            extra={
                "room": session.room,
                "session": session.id,
                "event": "viewer.layer_down" if switch.down else "viewer.layer_up",
            },
        )

    @staticmethod
    def _resume(session: ViewerSession) -> None:
        """A drained switch that will not happen: the current layer's video goes on from its
        next keyframe."""
        video = session.viewer.queues.get("video")
        if video is not None and video.held:
            video.restart()
            session.hub.request_keyframe()

    def set_pin(self, session: ViewerSession, layer: str | None) -> None:
        """Keep the viewer on ``layer`` (None: adapt again); the move happens at once."""
        ladder = self.ladder(session)
        names = [x.name for x in ladder]
        if layer is not None and layer not in names:
            raise Unprocessable(f"no layer {layer!r} here; there are {', '.join(names) or 'none'}")
        session.pin = layer
        if session.selector is not None:
            session.selector.pin(layer)
        self.adapt(session, time.monotonic())

    async def _teardown(self, session: ViewerSession) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        session.hub.remove_viewer(session.viewer)
        selector = session.selector
        if selector is not None and selector.pending is not None and self._layers is not None:
            for layer in self.ladder(session):
                layer.hub.cancel_keyframe_call(session.id)
        self.finished.add_viewer(
            session.viewer, session.senders.values(), session.keyframe_gate, session.estimator
        )
        self.finished.sessions += 1
        session.life.end("closed")
        for sender in session.senders.values():
            sender.close()
        await close_quietly(session.pc)
        log.info(
            "viewer %s left room %s",
            session.id,
            session.room,
            extra={"room": session.room, "session": session.id, "event": "viewer.left"},
        )

    def get(self, room: str, session_id: str) -> ViewerSession:
        session = self.sessions.get(session_id)
        if session is None or session.room != room:
            raise NotFound("no such viewer session")
        return session

    async def close(self, room: str, session_id: str) -> None:
        await self._finish(self.get(room, session_id), "deleted")

    async def trickle(self, session: ViewerSession, frag: TrickleFragment) -> None:
        await apply_trickle(session.pc, frag, self.limits.candidates)

    async def _finish(self, session: ViewerSession, reason: str) -> None:
        if session.life.task is None or session.life.task is asyncio.current_task():
            session.life.end(reason)
            await self._teardown(session)
        else:
            await session.life.stop(reason)

    async def shutdown(self) -> None:
        for task in (self._monitor, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._reporter = None
        sessions = list(self.sessions.values())
        await asyncio.gather(
            *(self._finish(s, "shutdown") for s in sessions), return_exceptions=True
        )
