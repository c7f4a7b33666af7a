"""One viewer's bandwidth estimate from what it sends back, sans I/O (every call takes ``now``).

Three sources, best first:

* transport-cc feedback (Chromium, Firefox): we number every packet we send to the viewer with
  a transport-wide sequence number (``record``) and the viewer reports when each arrived. Two
  estimates in the spirit of Google Congestion Control (draft-ietf-rmcat-gcc-02), kept small:
  - delay-based: packets sent within 5 ms form a group; the change of one-way delay between
    groups is accumulated, smoothed, and the slope of its last 20 values (a trendline) is
    compared with an adaptive threshold (overuse detector). Overuse: the target drops to 0.85
    of the rate the viewer acknowledged; otherwise it grows 8 %/s, and at once to the
    acknowledged rate (what the link has just carried without queueing), capped at 1.5 times
    that rate, or at what a probe showed the link carries while that result is fresh.
  - loss-based: loss over the last second above 10 % (for ``LOSS_PERSIST`` s, or at once
    when the delay moves) lowers the target by half the loss (at most once per 300 ms + RTT,
    never below 0.85 of the acknowledged rate: the link carried that much); below 2 % it
    grows like the delay-based one, and so it does up to 10 % while the delay detector reads
    normal (random loss on a wide link neither collapses the estimate nor holds it where it
    was when the loss began); in between with the delay moving it holds.
  The target is the lower of the two.
* REMB: the receiver's own estimate (aiortc sends one), clamped to sane bounds; while the
  viewer's receiver reports show no loss it is not taken below 0.85 of what we send (aiortc's
  estimator reads a busy sender's jitter as congestion: REMBs of ~100 kbps for a clean 1.5 Mbps
  loopback stream were seen).
* receiver reports only: the loss-based rule above applied to the rate we send.

Probes (``begin_probe``/``end_probe``, driven by ``relay.media.probe.ProbeController``): every
packet recorded in between belongs to the cluster, media and probe packets alike; once the
feedback covers it, the cluster's rate is the lower of the rate it was sent at and the rate it
arrived at (libwebrtc's ProbeBitrateEstimator: a link that spread the cluster out carries about
0.95 of the arrival rate), the arrival rate taken after the first third of its packets (a
token bucket lets the head through at line rate). A valid result without overuse lifts both
targets to it.

What one transport-cc feedback changes (the rate limit, the groups, the trendline, the windows
and both targets) lives in a ``TwccState``: in C when built (``relay/media/_twcc.c``, a whole
feedback in one call, ~0.5 us against ~6 us with the trendline and targets in Python), this
module's class otherwise and as the reference the tests hold the C one to.

Feedback is data from the network: malformed packets are counted and ignored, arrival times
that jump by more than ``MAX_GAP`` reset the delay filter, packets we never sent (or sent too
long ago) are counted and ignored, and every target is clamped to ``[min_bps, max_bps]`` and to
1.5 times what we actually sent, so a lying viewer can at most ask for what it gets.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from relay.media.cc_feedback import (
    RTCP_RTPFB,
    FeedbackError,
    TransportFeedback,
    feedback_packets,
    lone_transport_feedback,
    parse_remb,
    parse_transport_feedback,
    without_transport_feedback,
)

try:  # the feedback's parse and packet loop in one C call (setup.py); the Python loop below is
    # the fallback and the reference (tests/unit/test_twcc_native.py)
    from relay.media import _twcc  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - built by scripts/bootstrap
    _twcc = None

MIN_BPS = 30_000
MAX_BPS = 100_000_000
HISTORY = 1024  # packets remembered for feedback: ~4 s of a 2.5 Mbps stream with its audio
HISTORY_AGE = 5.0  # seconds after which a sent packet's feedback is ignored
BURST = 0.005  # packets sent within this many seconds form one group
DELAY_MIN_SIZE = 300
"""Packets smaller than this (audio) count for loss and rate but not in the delay filter: a
group per audio packet would more than double the filter's work (per viewer) for what the
video's groups already tell."""
MAX_GAP = 5.0  # seconds: a larger jump between groups' arrivals resets the delay filter
TWCC_FRESH = 2.0  # seconds a source's last feedback counts for
REMB_FRESH = 5.0
RR_FRESH = 10.0
BETA = 0.85
GROWTH = 1.08  # per second
HEADROOM = 1.5
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_PERSIST = 0.5
"""Seconds loss must stay over ``LOSS_HIGH`` (with the delay not moving) before the target
backs off for it: a one-second window of random 8 % loss goes over 10 % by chance."""
WINDOW = 1.0  # seconds of acknowledged/sent bytes and losses measured
PROBE_FRESH = 5.0  # seconds a probe's result may lift the cap above HEADROOM x the acked rate
PROBE_TIMEOUT = 1.0  # seconds after a cluster's end its feedback may take
PROBE_MIN_PACKETS = 5
PROBE_MIN_RECEIVED = 0.8  # share of a cluster's packets that must arrive for a rate
PROBE_MIN_INTERVAL = 0.01  # s: a cluster sent or received in less tells nothing
PROBE_MAX_RATIO = 2.0  # arrival rate over send rate beyond this: a bogus measurement
PROBE_SATURATED = 0.9  # arrived below this share of the send rate: the link's capacity found
PROBE_UTILIZATION = 0.95
FEEDBACK_RATE = 50.0  # transport-cc feedbacks taken per second (libwebrtc sends ~10-20)...
FEEDBACK_BURST = 10.0  # ... with this burst; beyond it they are dropped unread: each costs a
# loop over up to MAX_STATUS_COUNT packets, and a viewer could send 50 in one datagram


class Usage(Enum):
    NORMAL = "normal"
    OVERUSE = "overuse"
    UNDERUSE = "underuse"


@dataclass(frozen=True, slots=True)
class BandwidthEstimate:
    """What one viewer's link carries, as far as its feedback tells. ``target_bps`` is None
    until some feedback came; ``rtt`` in seconds (None while unknown)."""

    target_bps: int | None
    loss_fraction: float
    rtt: float | None
    source: str  # "twcc" | "remb" | "rr" | "none"
    acked_bps: int | None = None  # what the viewer acknowledged (transport-cc)
    sent_bps: int = 0
    usage: str = Usage.NORMAL.value
    jitter: float | None = None  # seconds, from receiver reports
    feedbacks: int = 0  # transport-cc feedback packets taken
    rembs: int = 0
    reports: int = 0  # receiver reports taken
    malformed: int = 0  # feedback packets that did not parse
    refused: int = 0  # feedback packets over FEEDBACK_RATE, dropped unread
    clamped: int = 0  # absurd values (estimates, arrival jumps) clamped or reset
    unknown: int = 0  # packets reported that we did not send (or too long ago)
    probes: int = 0  # probe clusters measured
    probe_bps: int | None = None  # the last probe's result while fresh (PROBE_FRESH)


NO_ESTIMATE = BandwidthEstimate(None, 0.0, None, "none")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A probe cluster, measured: ``bitrate`` is what the link carried (None: not measurable:
    too few packets arrived or the timing made no sense); ``lost`` of ``sent`` packets."""

    cluster: int
    bitrate: int | None
    send_bps: int
    receive_bps: int
    sent: int
    lost: int
    usage: str  # the delay detector's state when the result was taken

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else 0.0


if _twcc is not None:
    _twcc.set_usages(Usage.NORMAL, Usage.OVERUSE, Usage.UNDERUSE)


class _Cluster:
    """What the feedback has told so far about one probe cluster's packets: (send, arrival,
    size) of each that arrived (a cluster is tens of packets)."""

    __slots__ = ("base", "ended", "lost", "packets", "queued", "sent")

    def __init__(self) -> None:
        self.sent = self.lost = 0
        self.packets: list[tuple[float, float, int]] = []
        self.ended: float | None = None
        self.base = float("inf")  # the least (arrival - send) seen: no queue
        self.queued = 0.0  # s: the most a packet of it waited beyond that

    def acked(self, send: float, arrival: float, size: int) -> None:
        self.packets.append((send, arrival, size))
        delay = arrival - send  # one way plus the clocks' offset: only its growth counts
        if delay < self.base:
            self.base = delay
        elif delay - self.base > self.queued:
            self.queued = delay - self.base

    def result(self, cluster: int, usage: Usage) -> ProbeResult:
        """The send rate over the whole cluster, the arrival rate over the packets after the
        first third by arrival: a token bucket on the way (tbf, a radio's burst allowance)
        lets a cluster's head through at line rate, which would read as capacity."""
        packets = self.packets
        bitrate: int | None = None
        send_bps = receive_bps = 0
        if len(packets) >= max(PROBE_MIN_PACKETS, PROBE_MIN_RECEIVED * self.sent):
            by_send = sorted(packets)
            send_span = by_send[-1][0] - by_send[0][0]
            by_arrival = sorted(packets, key=lambda p: p[1])[len(packets) // 3 :]
            arrival_span = by_arrival[-1][1] - by_arrival[0][1]
            if send_span >= PROBE_MIN_INTERVAL and arrival_span >= PROBE_MIN_INTERVAL:
                send_bps = int(8 * sum(p[2] for p in by_send[:-1]) / send_span)
                receive_bps = int(8 * sum(p[2] for p in by_arrival[1:]) / arrival_span)
                if send_bps > 0 and receive_bps <= PROBE_MAX_RATIO * send_bps:
                    rate = min(send_bps, receive_bps)
                    if receive_bps < PROBE_SATURATED * send_bps:
                        rate = int(PROBE_UTILIZATION * receive_bps)
                    bitrate = rate
        return ProbeResult(
            cluster, bitrate, send_bps, receive_bps, self.sent, self.lost, usage.value
        )


class _Window:
    """Bytes (or counts) added over the last ``WINDOW`` seconds."""

    __slots__ = ("_events", "_start", "_sum")

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._sum = 0
        self._start: float | None = None

    def add(self, now: float, value: int) -> None:
        if self._start is None:
            self._start = now
        self._events.append((now, value))
        self._sum += value
        events = self._events
        while now - events[0][0] >= WINDOW:
            self._sum -= events.popleft()[1]

    def total(self, now: float) -> int:
        events = self._events
        while events and now - events[0][0] >= WINDOW:
            self._sum -= events.popleft()[1]
        return self._sum

    def rate(self, now: float, minimum_span: float = 0.25) -> float | None:
        """Per second over the window (over the time since the first value while shorter);
        None before ``minimum_span`` seconds of values."""
        if self._start is None or now - self._start < minimum_span:
            return None
        return self.total(now) / min(WINDOW, now - self._start)


class _Buckets:
    """Bytes added over the last second in ten 0.1 s buckets: adding is a few operations (it
    runs per frame and viewer), reading sums them. The state is one array of doubles
    (``BUCKET`` .. ``COUNTS``) so that the C send loop (``relay/rtc/_srtp_writer.c``,
    ``send_recorded``) adds a frame's bytes as it sends it, with this class's arithmetic."""

    __slots__ = ("state",)
    SLOTS = 10
    WIDTH = WINDOW / 10
    BUCKET, CURRENT, STARTED, START, SPAN, COUNTS = range(6)  # COUNTS: the first of SLOTS

    def __init__(self) -> None:
        self.state = array("d", [0.0]) * (self.COUNTS + self.SLOTS)
        self.state[self.SPAN] = self.WIDTH

    def add(self, now: float, value: int) -> None:
        state = self.state
        bucket = int(now / self.WIDTH)
        if bucket != state[0]:
            self._roll(bucket, now)
        state[1] += value

    def _roll(self, bucket: int, now: float) -> None:
        state, slots, counts = self.state, self.SLOTS, self.COUNTS
        if not state[self.STARTED]:
            state[self.STARTED], state[self.START] = 1.0, now
        current = int(state[self.BUCKET])
        if bucket > current:
            state[counts + current % slots] = state[self.CURRENT]
            for b in range(current + 1, min(bucket, current + slots + 1)):
                state[counts + b % slots] = 0.0
        state[self.BUCKET] = bucket
        state[self.CURRENT] = 0.0

    def rate(self, now: float, minimum_span: float = 0.25) -> float | None:
        """Per second over the last second (the buckets before the current one)."""
        bucket = int(now / self.WIDTH)
        state = self.state
        if bucket != state[self.BUCKET]:
            self._roll(bucket, now)
        start = state[self.START]
        if not state[self.STARTED] or now - start < minimum_span:
            return None
        slots, counts = self.SLOTS, self.COUNTS
        total = sum(state[counts + (bucket - k) % slots] for k in range(1, slots))
        span = min(WINDOW - self.WIDTH, max(self.WIDTH, now - start - (now % self.WIDTH)))
        return total / span


@dataclass(frozen=True)
class SendLog:
    """Where one estimator's sends are recorded, for a send loop that records a frame's
    packets as it sends them (``relay/rtc/_srtp_writer.c``'s ``send_recorded``: one call per
    frame instead of three): the history transport-cc feedback is matched against, the next
    transport-wide sequence number (``next[0]``, shared by the transport's senders) and the
    bytes-sent meter (``_Buckets``, whose ``state`` the C loop adds to)."""

    seqs: array[int]
    times: array[float]
    sizes: array[int]
    acked: bytearray
    next: array[int]
    meter: _Buckets


def record_sent(
    log: SendLog,
    sizes: Sequence[int],
    now: float,
    clusters: array[int] | None = None,
    cluster: int = 0,
) -> int:
    """Packets of ``sizes`` sent now, numbered on from ``log.next[0]`` (and, with
    ``clusters``, counted to probe cluster ``cluster``): what ``send_recorded`` records before
    its send, in Python (the reference). Returns the first number."""
    first = seq = log.next[0]
    seqs, times, lengths, acked = log.seqs, log.times, log.sizes, log.acked
    mask = len(acked) - 1
    for n in sizes:
        i = seq & mask
        seqs[i] = seq
        times[i] = now
        lengths[i] = n
        acked[i] = 0
        if clusters is not None:
            clusters[i] = cluster
        seq = (seq + 1) & 0xFFFF
    log.next[0] = seq
    return first


class _Trendline:
    """Delay-gradient trendline and overuse detector (libwebrtc's TrendlineEstimator, small).

    The least-squares slope over the last ``WINDOW`` points is kept with running sums (this
    runs per packet group and viewer), recomputed exactly every ``RESUM`` points so that
    rounding cannot drift."""

    WINDOW = 20
    RESUM = 256
    SMOOTHING = 0.9
    GAIN = 4.0
    K_UP = 0.0087
    K_DOWN = 0.039

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.accumulated = 0.0
        self.smoothed = 0.0
        self.deltas = 0
        self.points: deque[tuple[float, float]] = deque()
        self.origin: float | None = None  # arrival (ms) that x is measured from
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._since_resum = 0
        self.threshold = 12.5
        self.last_threshold_update: float | None = None
        self.over_time = -1.0
        self.over_count = 0
        self.prev_trend = 0.0
        self.usage = Usage.NORMAL

    def update(self, delay_ms: float, send_delta_ms: float, arrival_ms: float) -> Usage:
        self.deltas = min(self.deltas + 1, 1000)
        self.accumulated += delay_ms
        self.smoothed = y = self.SMOOTHING * self.smoothed + (1 - self.SMOOTHING) * self.accumulated
        if self.origin is None:
            self.origin = arrival_ms
        x = arrival_ms - self.origin
        points = self.points
        points.append((x, y))
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y
        if len(points) > self.WINDOW:
            ox, oy = points.popleft()
            self._sx -= ox
            self._sy -= oy
            self._sxx -= ox * ox
            self._sxy -= ox * oy
        self._since_resum += 1
        if self._since_resum >= self.RESUM:
            self._resum()
        if len(points) == self.WINDOW:
            trend = min(self.deltas, 60) * self.slope() * self.GAIN
            self._detect(trend, send_delta_ms, arrival_ms)
        return self.usage

    def slope(self) -> float:
        """The least-squares slope of the points kept, from the running sums."""
        n = len(self.points)
        den = n * self._sxx - self._sx * self._sx
        return (n * self._sxy - self._sx * self._sy) / den if den > 0 else 0.0

    def _resum(self) -> None:
        """Exact sums again, with x measured from the oldest point kept."""
        shift = self.points[0][0]
        assert self.origin is not None
        self.origin += shift
        self.points = deque((x - shift, y) for x, y in self.points)
        self._sx = sum(x for x, _ in self.points)
        self._sy = sum(y for _, y in self.points)
        self._sxx = sum(x * x for x, _ in self.points)
        self._sxy = sum(x * y for x, y in self.points)
        self._since_resum = 0

    def _detect(self, trend: float, send_delta_ms: float, now_ms: float) -> None:
        if trend > self.threshold:
            self.over_time = send_delta_ms / 2 if self.over_time < 0 else self.over_time
            self.over_time += send_delta_ms
            self.over_count += 1
            if self.over_time > 10 and self.over_count > 1 and trend >= self.prev_trend:
                self.over_time, self.over_count = 0.0, 0
                self.usage = Usage.OVERUSE
        elif trend < -self.threshold:
            self.over_time, self.over_count = -1.0, 0
            self.usage = Usage.UNDERUSE
        else:
            self.over_time, self.over_count = -1.0, 0
            self.usage = Usage.NORMAL
        self.prev_trend = trend
        # the threshold follows the trend's size slowly (up) or faster (down), so a steady
        # delay noise does not read as overuse and a competing TCP flow does not starve us
        last = self.last_threshold_update
        self.last_threshold_update = now_ms
        if last is None or abs(trend) > self.threshold + 15:
            return
        k = self.K_DOWN if abs(trend) < self.threshold else self.K_UP
        dt = min(max(now_ms - last, 0.0), 100.0)
        threshold = self.threshold + k * (abs(trend) - self.threshold) * dt
        self.threshold = min(600.0, max(6.0, threshold))


def slope(points: list[tuple[float, float]] | deque[tuple[float, float]]) -> float:
    """Least-squares slope, computed plainly (the reference for the running sums)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    num = sum((x - mx) * (y - my) for x, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return num / den if den else 0.0


Group = tuple[float, float, float]  # the open packet group: (first send, last send, latest arrival)
Match = tuple[int, int, int, int, list[tuple[float, float]], Group]


def match_feedback(
    feedback: TransportFeedback,
    now: float,
    history: tuple[array[int], array[float], array[int], bytearray],
    group: Group,
    cluster_of: array[int] | None = None,
    clusters: dict[int, _Cluster] | None = None,
) -> Match:
    """One feedback's statuses against the send history (sequence numbers, send times, sizes,
    acked flags; the flags updated in place): (received, lost, acked bytes, unknown, the packet
    groups it completed, the open group after it). With ``cluster_of``/``clusters`` a probe
    cluster's packets are also counted to their cluster. ``TwccState.take`` (and its C twin)
    match without clusters; the estimator with, while a probe waits for its feedback."""
    seqs, times, lengths, acked = history
    received = lost = acked_bytes = unknown = 0
    base = feedback.base_sequence
    g_first, g_send, g_arrival = group
    groups: list[tuple[float, float]] = []
    for offset, arrival in enumerate(feedback.arrivals):
        seq = (base + offset) & 0xFFFF
        i = seq & (HISTORY - 1)
        send = times[i]
        if seqs[i] != seq or now - send > HISTORY_AGE:
            unknown += 1
            continue
        cluster = cluster_of[i] if cluster_of is not None else 0
        if arrival is None:
            if not acked[i]:
                lost += 1
                if cluster and cluster_of is not None and clusters and cluster in clusters:
                    clusters[cluster].lost += 1
                    cluster_of[i] = 0  # counted once
            continue
        if acked[i]:
            continue  # reported twice
        acked[i] = 1
        received += 1
        size = lengths[i]
        acked_bytes += size
        if cluster and clusters is not None:
            found = clusters.get(cluster)
            if found is not None:
                found.acked(send, arrival, size)
        if size < DELAY_MIN_SIZE:
            continue
        if g_first >= 0 and send - g_first <= BURST:
            g_send = send
            if arrival > g_arrival:
                g_arrival = arrival
            continue
        if g_first >= 0:
            groups.append((g_send, g_arrival))
        g_first = g_send = send
        g_arrival = arrival
    return received, lost, acked_bytes, unknown, groups, (g_first, g_send, g_arrival)


class TwccState:
    """The transport-cc side of one estimator, the part every feedback updates: the rate limit
    on feedback, the packet groups and the trendline, the acknowledged/received/lost windows and
    the delay- and loss-based targets. This is the reference; ``relay/media/_twcc.c``'s
    ``TwccState`` is the same in C (held to it by tests/unit/test_twcc_native.py), whose
    ``take`` does a whole feedback (rate limit, parse, match, groups, targets) in one call: a
    viewer's feedback costs no Python step beyond the call (issues 17 and 20).

    ``take``/``apply`` get the last probe's result (``probe_bps``, < 0: none; ``probe_at``)
    and the round trip (``rtt``, 0: unknown) from the estimator, which owns them."""

    def __init__(
        self,
        seqs: array[int],
        times: array[float],
        sizes: array[int],
        acked: bytearray,
        feedback_rate: float = FEEDBACK_RATE,
        feedback_burst: float = FEEDBACK_BURST,
    ) -> None:
        self._seq, self._time, self._size, self._acked = seqs, times, sizes, acked
        self._rate, self._burst = feedback_rate, feedback_burst
        self.trend = _Trendline()
        self.acked_bytes = _Window()
        self.received = _Window()
        self.lost = _Window()
        self.group: Group = (-1.0, -1.0, -1.0)  # -1: no group open yet
        self.prev: tuple[float, float] | None = None  # (send, arrival) of the last group
        self.delay_target: float | None = None
        self.loss_target: float | None = None
        self.increasing = True
        self.last_update: float | None = None
        self.last_loss_decrease = float("-inf")
        self.loss_high_since: float | None = None  # loss over LOSS_HIGH since (None: not now)
        self.twcc_at: float | None = None
        self.feedbacks = 0
        self.unknown = 0
        self.clamped = 0
        self.lost_packets = 0  # reported lost, monotonic (a probe stops at the first)
        self.refused = 0
        self.tokens = feedback_burst
        self.tokens_at: float | None = None

    @property
    def usage(self) -> Usage:
        return self.trend.usage

    def admit(self, now: float) -> bool:
        """Whether a feedback arriving ``now`` is within the rate limit (else it is counted in
        ``refused`` and must be dropped unread)."""
        last, self.tokens_at = self.tokens_at, now
        if last is not None:
            self.tokens = min(self._burst, self.tokens + (now - last) * self._rate)
        if self.tokens < 1.0:
            self.refused += 1
            return False
        self.tokens -= 1.0
        return True

    def take(
        self, fci: bytes | memoryview, now: float, probe_bps: float, probe_at: float, rtt: float
    ) -> int:
        """One feedback's FCI, whole: 0 taken, 1 malformed (nothing changed), 2 refused (the
        rate limit)."""
        if not self.admit(now):
            return 2
        try:
            feedback = parse_transport_feedback(fci)
        except FeedbackError:
            return 1
        history = (self._seq, self._time, self._size, self._acked)
        matched = match_feedback(feedback, now, history, self.group)
        self.apply(now, *matched, probe_bps, probe_at, rtt)
        return 0

    def apply(
        self,
        now: float,
        received: int,
        lost: int,
        acked_bytes: int,
        unknown: int,
        groups: Sequence[tuple[float, float]],
        group: Group,
        probe_bps: float,
        probe_at: float,
        rtt: float,
    ) -> None:
        """What one feedback told, matched against the send history: the packets it
        acknowledged, lost and did not know, the groups it completed (in order) and the one
        left open."""
        self.feedbacks += 1
        self.twcc_at = now
        self.unknown += unknown
        usage = self.trend.usage
        for group_send, group_arrival in groups:
            usage = self._group_done(group_send, group_arrival)
        self.group = group
        if received:
            self.acked_bytes.add(now, acked_bytes)
            self.received.add(now, received)
        if lost:
            self.lost.add(now, lost)
            self.lost_packets += lost
        self._update(usage, now, probe_bps, probe_at, rtt)

    def _group_done(self, group_send: float, group_arrival: float) -> Usage:
        """A packet group is complete: compare it with the one before."""
        prev = self.prev
        self.prev = (group_send, group_arrival)
        if prev is None:
            return self.trend.usage
        send_delta = group_send - prev[0]
        arrival_delta = group_arrival - prev[1]
        if abs(arrival_delta) > MAX_GAP or send_delta < 0:
            self.clamped += 1  # a clock jump or a lie: start the filter afresh
            self.trend.reset()
            return self.trend.usage
        if arrival_delta < 0:
            return self.trend.usage  # reordered groups: skip
        return self.trend.update(
            (arrival_delta - send_delta) * 1000, send_delta * 1000, group_arrival * 1000
        )

    def _update(
        self, usage: Usage, now: float, probe_bps: float, probe_at: float, rtt: float
    ) -> None:
        acked_rate = self.acked_bytes.rate(now)
        if acked_rate is None:
            return
        acked = 8 * acked_rate
        dt = 0.0 if self.last_update is None else min(max(now - self.last_update, 0.0), 1.0)
        self.last_update = now
        growth = GROWTH**dt
        cap = HEADROOM * acked + 10_000
        if probe_bps >= 0 and now - probe_at <= PROBE_FRESH:
            cap = max(cap, probe_bps)  # the link carried that much a moment ago
        loss = self.loss(now)
        # delay-based
        target = self.delay_target if self.delay_target is not None else acked
        if usage is Usage.OVERUSE:
            target = min(target, BETA * acked)
            self.increasing = False
        elif usage is Usage.UNDERUSE:
            self.increasing = False  # hold: the queues are draining
        elif not self.increasing:
            self.increasing = True  # normal after a hold: increase from the next feedback
        else:  # what just got through without queueing fits; loss is the other rule's
            target = max(target * growth, acked)
        self.delay_target = min(target, cap)
        # loss-based
        loss_target = self.loss_target if self.loss_target is not None else acked
        if loss > LOSS_HIGH:
            since = self.loss_high_since
            if since is None:
                since = self.loss_high_since = now
            persistent = now - since >= LOSS_PERSIST
            if (persistent or usage is not Usage.NORMAL) and (
                now - self.last_loss_decrease >= 0.3 + rtt
            ):
                self.last_loss_decrease = now
                loss_target = max(loss_target * (1 - 0.5 * loss), BETA * acked)
        else:
            self.loss_high_since = None
            if loss < LOSS_LOW or usage is Usage.NORMAL:
                # loss up to LOSS_HIGH while the delay does not move is random loss on the way,
                # not a full queue (that shows as delay first): held there, a target taken from
                # the first second's acked rate stayed below the stream at 5 % loss and moved
                # the viewer down and up again (tests/unit/test_estimator.py, closed loop)
                loss_target = max(loss_target * growth, acked)
        self.loss_target = min(loss_target, cap)

    def acked_rate(self, now: float) -> float | None:
        """Bytes a second the viewer acknowledged over the last second (None: too early)."""
        return self.acked_bytes.rate(now)

    def loss(self, now: float) -> float:
        """The share of packets reported lost over the last second."""
        lost = self.lost.total(now)
        total = lost + self.received.total(now)
        return lost / total if total else 0.0

    def inner(self, now: float) -> tuple[object, ...]:
        """Every field, as the C state's ``inner`` lists them (tests compare the two)."""
        t = self.trend
        usage = (Usage.NORMAL, Usage.OVERUSE, Usage.UNDERUSE).index(t.usage)
        trend = (
            t.accumulated,
            t.smoothed,
            t.deltas,
            list(t.points),
            t.origin,
            t._sx,
            t._sy,
            t._sxx,
            t._sxy,
            t._since_resum,
            t.threshold,
            t.last_threshold_update,
            t.over_time,
            t.over_count,
            t.prev_trend,
            usage,
        )
        return (
            trend,
            self.group,
            self.prev,
            self.delay_target,
            self.loss_target,
            int(self.increasing),
            self.last_update,
            self.last_loss_decrease,
            self.loss_high_since,
            self.twcc_at,
            self.feedbacks,
            self.unknown,
            self.clamped,
            self.lost_packets,
            self.refused,
            self.tokens,
            self.tokens_at,
            (self.acked_bytes.total(now), self.received.total(now), self.lost.total(now)),
        )


class BandwidthEstimator:
    """One viewer transport's estimate: ``record`` every packet sent (transport-cc), ``sent``
    every frame's bytes, and feed what the viewer reports; ``snapshot`` reads it."""

    def __init__(
        self, *, min_bps: int = MIN_BPS, max_bps: int = MAX_BPS, native: bool = True
    ) -> None:
        if not 0 < min_bps <= max_bps:
            raise ValueError("0 < min_bps <= max_bps")
        self.native = native and _twcc is not None  # transport-cc feedback taken in C
        self.min_bps = min_bps
        self.max_bps = max_bps
        self._next = array("l", [0])  # the next transport-wide sequence number (SendLog.next)
        self._seq = array("l", [-1]) * HISTORY
        self._time = array("d", [0.0]) * HISTORY
        self._size = array("l", [0]) * HISTORY
        self._acked = bytearray(HISTORY)
        self._cluster_of = array("l", [0]) * HISTORY  # the probe cluster a packet belongs to
        self._probing = 0  # the open cluster's id (0: none)
        self._clusters: dict[int, _Cluster] = {}
        self._probe_results: list[ProbeResult] = []
        self._probe_bps: float | None = None  # the last valid probe result...
        self._probe_at = float("-inf")  # ... and when it came
        self.probes = 0  # clusters measured
        self._sent = _Buckets()
        self.send_log = SendLog(
            self._seq, self._time, self._size, self._acked, self._next, self._sent
        )
        # ``sent`` in one call (per frame and viewer): the meter's own add, bound
        self.add_sent: Callable[[float, int], None] = self._sent.add
        # the transport-cc side (the rate limit, groups, trendline, windows, targets): in C
        # when built, every feedback in one call; the Python class is the reference
        twcc_state = _twcc.TwccState if self.native else TwccState
        self._cc: TwccState = twcc_state(
            self._seq, self._time, self._size, self._acked, FEEDBACK_RATE, FEEDBACK_BURST
        )
        self._remb: float | None = None
        self._remb_at: float | None = None
        self._rr_target: float | None = None
        self._rr_at: float | None = None
        self._rr_loss = 0.0
        self._rtt: float | None = None
        self._jitter: float | None = None
        self.rembs = 0
        self.reports = 0
        self.malformed = 0
        self._clamped = 0  # REMB, receiver reports, round trips (the feedback's: TwccState)
        # told the transport-wide numbers a feedback reported lost, when one did (repairs
        # without a NACK: relay/media/feedback_repair.py); None: nobody asks
        self.on_lost: Callable[[list[int], float], None] | None = None
        # what TwccState.take reads besides the feedback: probe_bps (-1: none), probe_at, rtt,
        # and 1.0 while a probe cluster waits (its feedback must be matched here); kept current
        # for a feedback lane that calls take without Python (relay/rtc/_rtcp_reader.c)
        self.lane_params = array("d", [-1.0, float("-inf"), 0.0, 0.0])

    def _sync_lane(self) -> None:
        p = self.lane_params
        p[0] = -1.0 if self._probe_bps is None else self._probe_bps
        p[1] = self._probe_at
        p[2] = self._rtt or 0.0
        p[3] = 1.0 if self._clusters else 0.0

    def lane(self) -> tuple[Any, array[float], Callable[[bytes, float, int, int], None]] | None:
        """(the TwccState, ``lane_params``, ``taken``) for a feedback lane that takes lone
        transport-cc feedback in C; None when this estimator's state is not the C one."""
        return (self._cc, self.lane_params, self.taken) if self.native else None

    @property
    def feedbacks(self) -> int:
        """Transport-cc feedback packets taken."""
        return self._cc.feedbacks

    @property
    def unknown(self) -> int:
        """Packets reported that we did not send (or too long ago)."""
        return self._cc.unknown

    @property
    def clamped(self) -> int:
        """Absurd values (estimates, arrival jumps) clamped or reset."""
        return self._clamped + self._cc.clamped

    @property
    def refused(self) -> int:
        """Feedback packets over FEEDBACK_RATE, dropped unread."""
        return self._cc.refused

    @property
    def lost_packets(self) -> int:
        """Packets reported lost, monotonic (a probe stops at the first)."""
        return self._cc.lost_packets

    # -- what we send ---------------------------------------------------------------------------
    @property
    def next_sequence(self) -> int:
        """The next transport-wide sequence number."""
        return self._next[0]

    @next_sequence.setter
    def next_sequence(self, value: int) -> None:
        self._next[0] = value

    def record(self, sizes: tuple[int, ...] | list[int], now: float) -> int:
        """Number ``len(sizes)`` packets sent now with transport-wide sequence numbers; returns
        the first (the i-th packet gets ``(first + i) & 0xFFFF``)."""
        if self.native and not self._probing:  # per frame and transport-cc viewer: in C
            first = self._next[0]
            self._next[0] = _twcc.record(
                self._seq, self._time, self._size, self._acked, first, sizes, now
            )
            return first
        # a probe cluster's packets are tagged here (the C loop does not know clusters; a
        # cluster is 0.1 s, and its feedback is matched in Python: match_feedback)
        cluster = self._probing
        first = record_sent(self.send_log, sizes, now, self._cluster_of, cluster)
        if cluster:
            self._clusters[cluster].sent += len(sizes)
        return first

    # -- probes ---------------------------------------------------------------------------------
    def begin_probe(self, cluster: int, now: float) -> None:
        """Packets recorded from now on belong to probe cluster ``cluster`` (> 0)."""
        if cluster <= 0:
            raise ValueError("cluster ids are positive")
        if self._probing:
            self.end_probe(now)
        self._probing = cluster
        self._clusters[cluster] = _Cluster()
        self._sync_lane()

    def renew_probe(self, now: float) -> None:
        """The viewer was moved up on the last probe's result: it holds another
        ``PROBE_FRESH`` s, while the new layer's rate fills the acknowledged window (else the
        cap, 1.5 x a window of the old layer's rate, would cut the target under the new one)."""
        if self._probe_bps is not None and now - self._probe_at <= PROBE_FRESH:
            self._probe_at = now
            self._sync_lane()

    def end_probe(self, now: float) -> None:
        cluster = self._clusters.get(self._probing)
        if cluster is not None:
            cluster.ended = now
        self._probing = 0

    @property
    def probing(self) -> bool:
        return self._probing != 0

    @property
    def probe_queued(self) -> float:
        """Seconds the open cluster's packets have queued so far (the growth of their one-way
        delay, from the feedback): a cluster above the link's rate fills its bottleneck queue
        long before the delay detector calls overuse or a loss is reported."""
        cluster = self._clusters.get(self._probing)
        return 0.0 if cluster is None else cluster.queued

    @property
    def usage(self) -> Usage:
        """The delay detector's state after the last feedback."""
        return self._cc.usage

    def take_probe_results(self, now: float) -> list[ProbeResult]:
        """Clusters measured since the last call (each once); a cluster whose feedback does
        not come within ``PROBE_TIMEOUT`` of its end is measured with what came."""
        for cid, c in list(self._clusters.items()):
            if c.ended is not None and now - c.ended >= PROBE_TIMEOUT:
                self._finish_probe(cid, c, now)
        out, self._probe_results = self._probe_results, []
        return out

    def _finish_probe(self, cid: int, cluster: _Cluster, now: float) -> None:
        del self._clusters[cid]
        cc = self._cc
        result = cluster.result(cid, cc.usage)
        self.probes += 1
        self._probe_results.append(result)
        if result.bitrate is not None and cc.usage is not Usage.OVERUSE:
            bps = float(self._clamp(result.bitrate))
            self._probe_bps, self._probe_at = bps, now
            if cc.delay_target is not None:
                cc.delay_target = max(cc.delay_target, bps)
            if cc.loss_target is not None and cc.loss(now) <= LOSS_HIGH:
                cc.loss_target = max(cc.loss_target, bps)
        self._sync_lane()

    def sent(self, size: int, now: float) -> None:
        """Bytes sent to the viewer (a frame, a retransmission): the rate receiver reports and
        the caps read. (``add_sent(now, size)`` is the same in one call.)"""
        self._sent.add(now, size)

    def sent_bps(self, now: float) -> float:
        rate = self._sent.rate(now)
        return 0.0 if rate is None else 8 * rate

    # -- what the viewer reports ----------------------------------------------------------------
    def on_transport_feedback(self, fci: bytes | memoryview, now: float) -> None:
        """A transport-cc feedback's FCI (after the two SSRCs)."""
        cc = self._cc
        probe_bps, probe_at, rtt, _ = self.lane_params
        lost_before = cc.lost_packets
        if not self._clusters:  # the common case: in one call (in C when built)
            self.taken(fci, now, cc.take(fci, now, probe_bps, probe_at, rtt), lost_before)
            return
        # while a probe cluster waits for its feedback: its packets counted to it
        if not cc.admit(now):
            return
        try:
            feedback = parse_transport_feedback(fci)
        except FeedbackError:
            self.malformed += 1
            return
        clusters = self._clusters
        history = (self._seq, self._time, self._size, self._acked)
        matched = match_feedback(feedback, now, history, cc.group, self._cluster_of, clusters)
        cc.apply(now, *matched, probe_bps, probe_at, rtt)
        for cid, c in list(clusters.items()):
            if c.ended is not None and len(c.packets) + c.lost >= c.sent:
                self._finish_probe(cid, c, now)
        self.taken(fci, now, 0, lost_before)

    def taken(self, fci: bytes | memoryview, now: float, code: int, lost_before: int) -> None:
        """After ``TwccState.take`` gave ``code`` (1: malformed) for ``fci``: the counts and
        feedback repair. A feedback lane calls it only for a malformed FCI or one that reported
        a loss (nothing else happens here)."""
        if code == 1:
            self.malformed += 1
        if self.on_lost is not None and self._cc.lost_packets != lost_before:
            # only a feedback that reported a loss is read again (a clean one costs nothing)
            self.on_lost(self.reported_lost(fci, now), now)

    def reported_lost(self, fci: bytes | memoryview, now: float) -> list[int]:
        """The transport-wide numbers of the packets a feedback (already taken) reports not
        received that we sent within ``HISTORY_AGE`` and no feedback has reported received."""
        try:
            if self.native:
                base, _, arrivals = _twcc.parse(fci)
            else:
                parsed = parse_transport_feedback(fci)
                base, arrivals = parsed.base_sequence, parsed.arrivals
        except ValueError:  # FeedbackError is one
            return []
        seqs, times, acked = self._seq, self._time, self._acked
        out = []
        for offset, arrival in enumerate(arrivals):
            if arrival is None:
                seq = (base + offset) & 0xFFFF
                i = seq & (HISTORY - 1)
                if seqs[i] == seq and not acked[i] and now - times[i] <= HISTORY_AGE:
                    out.append(seq)
        return out

    def acked(self, seq: int) -> bool:
        """Whether a feedback reported transport-wide number ``seq`` received (True, too, once
        it is no longer remembered: nothing can be done about it any more)."""
        i = seq & (HISTORY - 1)
        return self._seq[i] != seq or bool(self._acked[i])

    def twcc_loss(self, now: float) -> float:
        return self._cc.loss(now)

    def on_remb(self, fci: bytes | memoryview, now: float) -> None:
        """A REMB's FCI (after the two SSRCs)."""
        try:
            bitrate, _ = parse_remb(fci)
        except FeedbackError:
            self.malformed += 1
            return
        self.rembs += 1
        sent = self.sent_bps(now)
        ceiling = min(self.max_bps, max(self.min_bps, HEADROOM * sent)) if sent else self.max_bps
        if not self.min_bps <= bitrate <= ceiling:
            self._clamped += 1
        self._remb = float(self._clamp(min(bitrate, ceiling)))
        self._remb_at = now

    def on_receiver_report(self, fraction_lost: float, jitter: float | None, now: float) -> None:
        """A receiver report block about our media: ``fraction_lost`` in 0..1, ``jitter`` in
        seconds."""
        self.reports += 1
        if not 0.0 <= fraction_lost <= 1.0:
            self._clamped += 1
            fraction_lost = min(1.0, max(0.0, fraction_lost))
        self._rr_loss = fraction_lost
        if jitter is not None:
            self._jitter = jitter
        sent = self.sent_bps(now)
        dt = 0.0 if self._rr_at is None else min(max(now - self._rr_at, 0.0), 2.0)
        self._rr_at = now
        target = self._rr_target if self._rr_target is not None else sent
        if fraction_lost > LOSS_HIGH:
            target = min(target, sent * (1 - 0.5 * fraction_lost))
        elif fraction_lost < LOSS_LOW:
            target = max(target * GROWTH**dt, sent)
        self._rr_target = min(target, HEADROOM * sent + 10_000)

    def on_rtt(self, rtt: float | None) -> None:
        """The round trip from receiver reports (LSR/DLSR), in seconds."""
        if rtt is None:
            return
        if not 0.0 <= rtt <= 10.0:
            self._clamped += 1
            return
        self._rtt = rtt
        self._sync_lane()

    # -- the result -----------------------------------------------------------------------------
    def _clamp(self, bps: float) -> int:
        return int(min(self.max_bps, max(self.min_bps, bps)))

    def _rr_fresh(self, now: float) -> bool:
        return self._rr_at is not None and now - self._rr_at <= RR_FRESH

    def snapshot(self, now: float) -> BandwidthEstimate:
        target: float | None = None
        loss = self._rr_loss if self._rr_at is not None else 0.0
        acked: int | None = None
        cc = self._cc
        twcc_at = cc.twcc_at
        if twcc_at is not None and now - twcc_at <= TWCC_FRESH:
            source = "twcc"
            loss = cc.loss(now)
            rate = cc.acked_rate(now)
            acked = None if rate is None else int(8 * rate)
            delay_target, loss_target = cc.delay_target, cc.loss_target
            if delay_target is not None and loss_target is not None:
                target = min(delay_target, loss_target)
        elif self._remb_at is not None and now - self._remb_at <= REMB_FRESH:
            source, target = "remb", self._remb
            if target is not None and self._rr_fresh(now) and self._rr_loss < LOSS_LOW:
                # a REMB far below what the viewer receives without loss is its estimator's
                # noise (aiortc's reacts to a busy sender's jitter), not the link
                target = max(target, BETA * self.sent_bps(now))
        elif self._rr_fresh(now):
            source, target = "rr", self._rr_target
        else:
            source = "none"
        return BandwidthEstimate(
            target_bps=None if target is None else self._clamp(target),
            loss_fraction=round(loss, 4),
            rtt=self._rtt,
            source=source,
            acked_bps=acked,
            sent_bps=int(self.sent_bps(now)),
            usage=cc.usage.value,
            jitter=self._jitter,
            feedbacks=cc.feedbacks,
            rembs=self.rembs,
            reports=self.reports,
            malformed=self.malformed,
            refused=cc.refused,
            clamped=self.clamped,
            unknown=cc.unknown,
            probes=self.probes,
            probe_bps=(
                int(self._probe_bps)
                if self._probe_bps is not None and now - self._probe_at <= PROBE_FRESH
                else None
            ),
        )


def take_rtcp(
    estimator: BandwidthEstimator, data: bytes, now: float, *, transport_cc: bool
) -> bytes:
    """A viewer's decrypted RTCP datagram through its estimator: transport-cc feedback (taken
    when ``transport_cc`` was negotiated, else dropped unread) and REMB; returns what aiortc
    still gets (all but the transport-cc packets, which it has no use for). The shared port's
    shortcut (``relay/rtc/rtcp_reader.py``: ``split_feedback``, then ``on_transport_feedback``
    per FCI and this on the rest) must leave the estimator and aiortc as this does."""
    lone = lone_transport_feedback(data)
    if lone is not None:  # the common case: nothing in it for aiortc
        if transport_cc:
            estimator.on_transport_feedback(lone, now)
        return b""
    twcc = False
    for pt, _, fci in feedback_packets(data):
        if pt == RTCP_RTPFB:
            twcc = True
            if transport_cc:
                estimator.on_transport_feedback(fci, now)
        elif bytes(fci[:4]) == b"REMB":
            estimator.on_remb(fci, now)
    return without_transport_feedback(data) if twcc else data
