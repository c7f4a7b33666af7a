"""When to probe one viewer's link for headroom, and how much to send, sans I/O.

A viewer on a low layer is sent that layer's bitrate, so a delay-based estimate never sees more:
after a dip it cannot tell that the link recovered. Probing (as libwebrtc's ProbeController and
LiveKit's prober do): now and then, send a short cluster of extra packets at a rate a higher
layer needs and let the transport-cc feedback measure what the link carried
(``BandwidthEstimator.begin_probe``/``end_probe``). The extra packets are RTX retransmissions of
packets just sent (``relay.rtc.probe_sender``): the viewer drops the duplicates, loses nothing
if one is lost, and transport-cc numbers them like media.

* Only with transport-cc feedback (nothing else measures a probe), only while the estimate is
  calm (no overuse or underuse, loss at most ``max_loss``) for ``stable`` s, and only when the
  estimate alone does not already show the next layer fits.
* A cluster aims at ``margin`` x the next layer's bitrate (media included), never more: a
  probe is capped at the layer it asks about. It carries ``duration`` s worth of probe bytes
  (with the frames: each carries the bytes due since the one before, one to three frames'
  worth, so frames that come late (a starved mixer's 180p came every ~100 ms) keep the rate
  and a very late one stretches the cluster instead of bursting it; it ends after ``timeout`` s
  whatever was sent) and stops at the first overuse or loss reported, or once its packets
  queued ``abort_queue`` s: above the link's rate for 0.3 s, a cluster overflowed the test
  bed's 100 ms tbf queue (30-40 % of a 360p -> 720p cluster lost on 1 Mbit/s, media with it,
  which moved the viewer down for congestion) before a loss came back to stop it.
* A cluster that carried at least ``success`` of its rate without overuse and with at most
  ``max_loss`` loss succeeded; the next layer up is probed ``again`` s later (a dip's recovery
  climbs the ladder in one go). ``probed`` answers the best rate shown, once the climb ended.
* A cluster that arrived as fast as it was sent but was sent below its rate, or could not be
  measured at all, without loss or overuse (a stalled source gave too few frames to carry it)
  is inconclusive: the next one ``retry`` s later.
* A failed cluster waits ``retry`` s before the next, doubling to ``max_retry``; a layer switch
  starts over (``first_after`` s later, base retry): a steady bottleneck costs one short burst
  every ``max_retry`` s. After a move down that ends ``fitted`` s of a calm estimate (the
  link changed under a viewer it carried: a dip, often over in seconds; not a viewer that
  joined on a thin link, however long its first picture took) the wait stays at most
  ``dip_retry`` s for ``dip_window`` s, as libwebrtc's ALR probing comes every 5 s: the
  failures inside a 10 s dip doubled the wait to 12-24 s, which the recovery then waited out.
* A cluster lasts ``duration`` s (0.3 s: ~9 frames). The probe bytes go with the frames, so a
  0.1 s cluster was three frame bursts; one late frame (a busy mixer) or the jitter of a
  loaded path moved its measured rates by a third, and clusters sent on a recovered, unlimited
  link measured 355-550 kbit/s for a 677 kbit/s aim (bench.adaptation drop400, Chromium,
  load 16-20: never climbed back). Over ~9 frames that noise averages out, and a token bucket
  (tbf's burst) can pass only the head of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.media.estimator import BandwidthEstimate, ProbeResult

FRAME = 1 / 30  # s: clusters are sent with the video frames, about this far apart
SATURATED = 0.9  # a cluster that arrived below this share of its send rate found the link's rate


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    duration: float = 0.3
    timeout: float = 0.8  # a cluster whose bytes the frames have not carried by then ends
    margin: float = 1.25  # x success: 1.125 x the layer, above the selector's ``probe_fit``
    success: float = 0.9
    stable: float = 1.0
    max_loss: float = 0.05
    first_after: float = 2.0
    retry: float = 3.0
    max_retry: float = 30.0
    again: float = 0.3
    fresh: float = 5.0  # s a success is answered by ``probed``
    abort_losses: int = 2  # losses reported while a cluster runs that stop it
    abort_queue: float = 0.04  # s of queueing reported while a cluster runs that stop it
    fitted: float = 5.0  # s of calm estimate before a move down that make it a dip
    dip_retry: float = 4.0  # the longest wait between clusters after a dip...
    dip_window: float = 30.0  # ... for this long after its move down


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    id: int
    bitrate: int  # the total rate (media and probe packets) the cluster aims at
    media_bps: int  # what the viewer is sent anyway
    start: float
    end: float

    @property
    def probe_bps(self) -> int:
        return max(0, self.bitrate - self.media_bps)


class ProbeController:
    """One viewer's probing: ``update`` every tick (may start a cluster), ``due`` at every frame
    sent while one runs (the probe bytes to add), ``switched`` at a layer switch."""

    def __init__(self, config: ProbeConfig | None = None, *, now: float = 0.0) -> None:
        self.config = c = config or ProbeConfig()
        self.active: ProbeCluster | None = None
        self._waiting: dict[int, ProbeCluster] = {}
        self._ids = 0
        self._sent = 0  # probe bytes of the active cluster
        self._last_due = now  # the frame before (the cluster's start before its first)
        self._lost_at_start = 0
        self._next_at = now + c.first_after
        self._retry = c.retry
        self._calm_since: float | None = None
        self._step = 0  # which of the higher layers the climb is at (0: the next one)
        self._climbing = False
        self._best: tuple[int, float] | None = None  # (bits/s shown, when)
        self._calm_span = 0.0  # how long the last calm stretch lasted...
        self._calm_ended = float("-inf")  # ... and when it ended
        self._dip_until = float("-inf")  # failures wait at most ``dip_retry`` s until then
        self.clusters = 0
        self.successes = 0
        self.failures = 0
        self.aborted = 0
        self.inconclusive = 0
        self.probe_bytes = 0

    # -- the tick -------------------------------------------------------------------------------
    def update(
        self,
        now: float,
        estimate: BandwidthEstimate,
        higher: Sequence[int],
        results: Iterable[ProbeResult] = (),
        lost_packets: int = 0,
    ) -> ProbeCluster | None:
        """``higher``: the bitrates of the layers above the viewer's, nearest first (empty on
        the top layer); ``results``: what the estimator measured since the last call. Returns
        a cluster to start now (the caller opens it in the estimator)."""
        c = self.config
        for result in results:
            self._judge(result, now)
        calm = (
            estimate.source == "twcc"
            and estimate.target_bps is not None
            and estimate.usage == "normal"
            and estimate.loss_fraction <= c.max_loss
        )
        if not calm:
            if self._calm_since is not None:
                self._calm_span, self._calm_ended = now - self._calm_since, now
            self._calm_since = None
            if self._climbing and estimate.usage == "overuse":
                self._climb_over()
            return None
        if self._calm_since is None:
            self._calm_since = now
        if self.active is not None or self._waiting or not higher:
            return None
        if self._climbing and self._step >= len(higher):  # every layer above shown to fit
            self._climb_over()
            self._next_at = max(self._next_at, now + c.fresh)
        if now < self._next_at or now - self._calm_since < c.stable:
            return None
        step = min(self._step, len(higher) - 1) if self._climbing else 0
        target = int(c.margin * higher[step])
        assert estimate.target_bps is not None
        if not self._climbing and estimate.target_bps >= target:
            return None  # the estimate shows it already: nothing to probe
        self._ids += 1
        self.clusters += 1
        media = max(estimate.sent_bps, 0)
        cluster = ProbeCluster(self._ids, target, media, now, now + c.duration)
        self.active = cluster
        self._sent = 0
        self._last_due = now
        self._lost_at_start = lost_packets
        self._step = step
        return cluster

    def due(
        self, now: float, *, overuse: bool = False, lost_packets: int = 0, queued: float = 0.0
    ) -> int | None:
        """Probe bytes to send now with this frame (0: none this time); None once the active
        cluster is over (time, overuse, loss, ``queued`` s of queueing): the caller closes it
        in the estimator."""
        cluster = self.active
        if cluster is None:
            return None
        c = self.config
        if (
            overuse
            or lost_packets - self._lost_at_start >= c.abort_losses
            or queued >= c.abort_queue
        ):
            self.aborted += 1
            self._close()
            return None
        total = cluster.probe_bps * (cluster.end - cluster.start) / 8
        if self._sent >= total or now >= cluster.start + self.config.timeout:
            self._close()
            return None
        # the bytes due by now, at most those since the frame before (one to three frames'
        # worth): late frames keep the rate, a stall stretches the cluster, never bursts it
        # (two frames' worth of a 360p -> 720p cluster, 11.6 kB at once with the frame, filled
        # a 1 Mbit/s link's 100 ms queue before any feedback could stop it)
        span = now - cluster.start + FRAME
        gap = min(max(now - self._last_due, FRAME), 3 * FRAME)
        self._last_due = now
        due = min(cluster.probe_bps * span / 8 - self._sent, cluster.probe_bps * gap / 8)
        return max(0, int(due))

    def sent(self, size: int) -> None:
        """Probe bytes went out for the active cluster."""
        self._sent += size
        self.probe_bytes += size

    def _close(self) -> None:
        cluster, self.active = self.active, None
        if cluster is not None:
            self._waiting[cluster.id] = cluster

    def switched(self, now: float, *, down: bool = False) -> None:
        """The viewer moved to another layer: what was probed is spent; start over. A move
        ``down`` right after ``fitted`` s of calm estimate is a dip: probe often until it is
        over."""
        c = self.config
        if down:
            calm = self._calm_since
            if (calm is not None and now - calm >= c.fitted) or (
                self._calm_span >= c.fitted and now - self._calm_ended <= c.fitted
            ):
                self._dip_until = now + c.dip_window
        self._waiting.clear()
        self._close()
        self._waiting.clear()
        self._climbing = False
        self._step = 0
        self._best = None
        self._retry = self.config.retry
        self._next_at = now + self.config.first_after

    # -- results --------------------------------------------------------------------------------
    def _judge(self, result: ProbeResult, now: float) -> None:
        cluster = self._waiting.pop(result.cluster, None)
        if cluster is None:
            return
        c = self.config
        clear = result.usage != "overuse" and result.loss <= c.max_loss
        ok = clear and result.bitrate is not None and result.bitrate >= c.success * cluster.bitrate
        unsaturated = result.receive_bps >= SATURATED * result.send_bps > 0
        undersent = result.bitrate is None or result.send_bps < c.success * cluster.bitrate
        if clear and not ok and undersent and (result.bitrate is None or unsaturated):
            # nothing measurable (a cluster in one burst) or the link carried all we sent but
            # we sent less than aimed (few frames came to carry the probe: a stalled source),
            # and nothing went wrong: inconclusive, not a failure
            self.inconclusive += 1
            self._next_at = now + c.retry
            return
        if ok:
            assert result.bitrate is not None
            self.successes += 1
            self._best = (result.bitrate, now)
            self._retry = c.retry
            self._climbing = True
            self._step += 1
            self._next_at = now + c.again
        else:
            self.failures += 1
            if self._climbing:
                self._climb_over()
            wait = self._retry
            if now < self._dip_until:
                wait = min(wait, c.dip_retry)
            self._next_at = now + wait
            self._retry = min(c.max_retry, 2 * self._retry)

    def _climb_over(self) -> None:
        self._climbing = False
        self._step = 0

    def probed(self, now: float, higher: int) -> int | None:
        """The rate the probes showed the link carries, once the climb is over (a failure, or
        every one of the ``higher`` layers shown); None while climbing or when nothing fresh was
        shown."""
        best = self._best
        if best is None or now - best[1] > self.config.fresh:
            return None
        if self._climbing and self._step < higher:
            return None
        return best[0]
