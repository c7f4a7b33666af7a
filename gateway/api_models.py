"""Request and response bodies of the operator API (pydantic lives only at the HTTP boundary)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.auth.tokens import LINK_SUBJECT_PREFIX, clean_claim

ROOM_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"  # as relay.http.common's


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoomCreate(_Body):
    name: str = Field(pattern=ROOM_PATTERN)
    private: bool = False
    max_viewers: int | None = Field(None, ge=1, le=1_000_000)
    chat: Literal["open", "audience", "anchors", "off"] = "audience"
    """Who may chat and like in the room's channel: open (anonymous viewers too), audience
    (viewers with a token), anchors (the audience only likes), off (commands only)."""
    record: bool = False
    """Record the program whenever the room goes live (see /v1/recordings)."""
    mode: Literal["stage", "call"] = "stage"
    """stage: the program mixes the anchors (co-hosting); call: every anchor pulls the others
    directly (the call page) and the program passes the first one through, never mixing."""


class MediaStats(BaseModel):
    codec: str
    fps: float
    bitrate_bps: float
    muted: bool


class LayerView(BaseModel):
    """One simulcast layer of a lone anchor passed through: watched as ``?rendition=name``
    (the first is also the program). ``carried_by``: the renditions it feeds now (its own, and
    those of stopped layers above or below it)."""

    name: str
    rid: str
    live: bool
    width: int | None
    height: int | None
    fps: float
    bitrate_bps: float
    carried_by: list[str]


class StreamView(BaseModel):
    room: str
    live: bool
    video: MediaStats | None = None
    audio: MediaStats | None = None
    width: int | None = None
    height: int | None = None
    viewers: int
    keyframe_requests: int
    frames_in: int
    keyframes_in: int = 0  # keyframes the anchor sent (each a response to a request, or its GOP)
    bytes_in: int
    uptime_s: float
    fanout_cpu_s: float = 0.0  # CPU spent sending this stream to its viewers (this node)
    layers: list[LayerView] = []  # simulcast layers of a lone anchor, highest first


class AnchorView(BaseModel):
    id: str
    room: str
    subject: str
    state: str
    connected: bool
    muted: list[str]
    packets_received: int
    packets_lost: int
    frames_skipped: int
    filler_bytes_dropped: int = 0
    """H.264 filler data (CBR padding) received and not forwarded."""
    video_packets_lost: int = 0
    """Of ``packets_lost``, video (NACKed; audio is not): sequence numbers never received, not
    even as a retransmission."""
    transport_cc: bool = False
    """The anchor negotiated transport-wide congestion control: the gateway sends it
    transport-cc feedback (else aiortc's REMB is all it gets)."""
    feedback_packets_sent: int = 0
    """Transport-cc feedback packets sent to the anchor."""
    nacked_packets: int = 0
    """Video packets asked for (RTCP NACK), each time it was asked (media.anchor_nack_tries
    > 1; else 0)."""
    renacked_packets: int = 0
    """Of those, the second and later requests for a packet."""
    nack_recovered: int = 0
    """Missing video packets that arrived after all; ``nack_recovered_after_repeat`` of them
    after a repeated request."""
    nack_recovered_after_repeat: int = 0
    nack_given_up: int = 0
    """Missing video packets no longer asked for: out of tries or too late to be played."""
    nack_late: int = 0
    """Of those, packets that arrived after all, too late for their frame."""
    repair_wait_ms: float | None = None
    """How long a hole in the video may hold it now (media.anchor_repair_wait_max; None:
    fixed reassembly_wait)."""
    repair_time_ms: float | None = None
    """Smoothed time from a gap to its missing packet's arrival (None: none measured)."""


class ViewerView(BaseModel):
    id: str
    room: str
    subject: str
    state: str
    frames_sent: int
    frames_dropped: int
    # the viewer's video feedback (direct sending only): NACK messages and the packets they
    # asked for, retransmissions sent and their bytes, keyframe requests (PLI/FIR)
    nacks: int = 0
    nacked_packets: int = 0
    retransmissions: int = 0
    rtx_bytes: int = 0
    rtx_late: int = 0  # NACKed packets not sent again: they could no longer be played in time
    rtx_repeat: int = 0  # not sent again: already resent less than a round trip before
    rtx_over_budget: int = 0  # not sent again: the viewer's retransmission budget was spent
    rtx_follow_ups: int = 0  # second copies of retransmissions (relay/media/retransmit.py)
    # ULPFEC in RED (relay/rtc/fec_sender.py): negotiated, parity packets and bytes sent, the
    # parity per media packet now (0: off), the loss it follows, readings its estimate left no
    # room for parity
    fec: bool = False
    fec_packets: int = 0
    fec_bytes: int = 0
    fec_overhead: float = 0.0
    fec_loss: float = 0.0
    fec_limited: int = 0
    audio_red: bool = False  # Opus in RED negotiated (relay/media/audio_red.py)
    audio_red_copies: int = 0  # earlier audio payloads its audio packets carried (RED)
    audio_red_bytes: int = 0
    asks_again: bool = False  # the viewer repeats its NACKs on its own (a browser does)
    nack_share: float = 0.0  # share of the packets sent that it asked for, last second or more
    nack_solicits: int = 0
    """Holes made so that it NACKs its missing list again (a viewer that asks once, without
    transport-cc: relay/media/nack_solicit.py), and the NACKs that answered one."""
    solicited_nacks: int = 0
    # a transport-cc viewer's media packets its feedback reported lost; of them those no NACK
    # asked for within the repair margin (a lost NACK), resent without one
    # (relay/media/feedback_repair.py, media.viewer_feedback_repair), and those a NACK asked
    # for after all (the viewer's own repeat), with the mean time from their send to it; the
    # mean time from an unasked one's send to the end of its margin (when it is resent)
    feedback_lost: int = 0
    feedback_unasked: int = 0
    feedback_repairs: int = 0
    late_nacks: int = 0
    late_nack_ms: float | None = None
    unasked_ms: float | None = None
    playout_delay_ms: int | None = None
    """The minimum playout delay its frames carry now (the playout-delay extension: while it
    asks for repairs, relay/media/playout_delay.py); None: none (not negotiated, or a clean
    link)."""
    keyframe_requests: int = 0
    keyframe_requests_suppressed: int = 0  # held back by the viewer's backoff
    rtt_ms: float | None = None
    fraction_lost: float = 0.0  # over the last second or more of its receiver reports
    # the viewer's bandwidth estimate (relay/media/estimator.py): its source ("twcc": transport-cc
    # feedback, "remb", "rr": receiver reports alone, "none"), target, the loss it reads (over the
    # last second with transport-cc), what the viewer acknowledged and what we sent it
    transport_cc: bool = False
    estimate_source: str = "none"
    estimate_bps: int | None = None
    estimate_loss: float = 0.0
    acked_bps: int | None = None
    sent_bps: int = 0
    delay_usage: str = "normal"  # the delay-based detector: normal, overuse, underuse
    jitter_ms: float | None = None
    feedback_malformed: int = 0
    layer: str | None = None  # the rendition/layer it receives (None: not on a ladder)
    layer_mode: str = "auto"  # "auto" (follows its link) or "pinned" (?layer=/?rendition=)
    layer_pinned: str | None = None
    layer_switches_up: int = 0
    layer_switches_down: int = 0
    # probes for headroom (relay/media/probe.py): clusters sent, those that showed the rate they
    # aimed at, the probe bytes (RTX) they cost, the last result while fresh
    probes: int = 0
    probes_succeeded: int = 0
    probe_bytes: int = 0
    probe_bps: int | None = None


class RoomView(BaseModel):
    name: str
    private: bool
    max_viewers: int | None
    chat: str = "audience"
    record: bool = False
    mode: str = "stage"
    persistent: bool
    live: bool
    anchors: list[AnchorView]
    viewers: int
    created_at: float


class ViewerList(BaseModel):
    room: str
    count: int
    viewers: list[ViewerView]


class MuteRequest(_Body):
    audio: bool | None = None
    video: bool | None = None


class TokenRequest(_Body):
    room: str = Field(pattern=ROOM_PATTERN)
    role: Literal["anchor", "audience"]
    subject: str = Field(min_length=1, max_length=128)
    ttl: int = Field(3600, ge=10, le=7 * 24 * 3600)

    @field_validator("subject")
    @classmethod
    def _printable(cls, subject: str) -> str:
        if not clean_claim(subject):  # what verification accepts (relay.auth.tokens)
            raise ValueError("the subject must be printable text")
        if subject.startswith(LINK_SUBJECT_PREFIX):  # nodes' own: they skip routing and limits
            raise ValueError(f"subjects starting with {LINK_SUBJECT_PREFIX!r} are the nodes' own")
        return subject


class TokenResponse(BaseModel):
    token: str
    room: str
    role: str
    expires_at: int
    url: str


class NodeView(BaseModel):
    """A node of the cluster as its last heartbeat in the registry describes it."""

    id: str
    url: str
    role: Literal["origin", "edge"]
    state: Literal["up", "draining", "stale"]  # stale: missed its last heartbeat (out of routing)
    draining: bool
    local: bool  # the node answering this request
    upstream: str  # an edge's upstream ("" for an origin)
    rooms: list[str]  # streams it serves now (an edge: pulls)
    anchors: int
    viewers: int
    max_viewers: int | None
    egress_bps: float
    max_egress_bps: float | None
    load: float  # 0 (idle) .. 1 (full) by its tighter limit; its viewer count when it has none
    cpu_percent: float  # of one core
    heartbeat_age_s: float
