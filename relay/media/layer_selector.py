"""Which layer (rendition, simulcast layer) one viewer should receive, sans I/O.

The one adaptation policy of a viewer: fed every tick with the layers on offer, the link
estimate (``LinkEstimate``: from the bandwidth estimator when there is one, else receiver
reports) and the viewer's congestion count (queue/socket overflows plus lossy receiver reports),
it answers with at most one ``Switch``. The caller performs it at the target layer's keyframe
and reports back (``switched``), or gives up (``abandoned``).

* Down fast: a layer above the estimate for ``down_after`` s, or ``down_events`` congestion
  events within ``down_window`` s (one is enough with ``severe_loss``), moves the viewer down, to
  the highest layer that fits when the estimate (or the loss) says how much fits, else one step;
  the current layer's video stops at once (``drain``), the target's keyframe restarts it.
* Up slowly: with an estimate, when it has stayed at ``up_margin`` x a higher layer's bitrate for
  ``hold`` s, or at once when a probe (``relay.media.probe``: the estimate alone never sees more
  than the layer it is sent) showed ``probe_fit`` x a higher layer's bitrate; without one, after
  ``blind_hold`` s without congestion (one step). An up-switch followed by a congestion event
  within ``settle`` s failed: the viewer goes back down at once and that hold doubles, up to
  ``max_hold``.
* A sudden drop (a move down from a layer held for ``settle`` s, or one that was ``calm``, no
  congestion and within the estimate, for ``calm`` s right before, counted from its first clean
  report window (``clean``): a viewer that joins slowly on a loaded node sends no lossy report
  for seconds, which is no proof that the layer fits: the link changed under a viewer that
  fitted) shortens the blind hold to ``dip_hold``: a dip is often over in seconds,
  while a viewer that never fitted (moved down right after joining) keeps the long one. For
  ``dip_window`` s after it the blind retry goes straight back to the layer the drop left (it
  fitted seconds ago; one step at a time took another ``min_up_interval`` per step), and a
  failed one waits no more than ``dip_hold`` of quiet: the retry comes ``min_up_interval`` after
  the last switch once the reports have been clean for ``dip_hold`` s, so the end of a dip is
  found within ~``min_up_interval`` s of it whatever its length (a failed retry on the still
  thin link costs ~1-2 s of stutter: its first lossy report window brings the viewer back).
  Only a drop at ``severe_loss`` (or by the estimate) counts as a dip, and a retry that fails at
  milder loss ends the dip's rule: random loss that crosses ``lossy`` now and then is no dip.
  After the window the holds double as before (a link that stays thin is not retried every
  10 s). A REMB/RR-only viewer (aiortc) has nothing else to find a dip's end with: its REMB
  follows what it receives, and a thin link carries the lower layer as cleanly as a wide one.
* No flapping: no up-switch within ``min_up_interval`` s of the last switch (doubled by each
  failed up-switch a probe made, up to ``max_hold``: a probe that passes on a link whose
  estimate then sinks, as a loaded sender's delay noise makes it, must not bring the viewer
  up again every 10 s), no down within
  ``min_down_interval`` s (the new layer's reports need that long to say anything; the
  joining layer only ``min_probe_down`` s: a viewer that joins on a thin link settles fast).
* A layer that stops being live moves its viewers at once (``urgent``: no keyframe wait).
* A pinned viewer gets its pin while it is live, whatever the link says.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Reason = Literal["estimate", "congestion", "probe", "probed", "gone", "pin"]
"""``probe``: a blind step up (no estimate); ``probed``: a probe showed the layer fits."""


class LinkEstimate(Protocol):
    """What the selector reads of a viewer's link (the bandwidth estimator's snapshot)."""

    @property
    def target_bps(self) -> int | None: ...

    @property
    def loss_fraction(self) -> float: ...

    @property
    def rtt(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ReportEstimate:
    """A ``LinkEstimate`` from receiver reports alone: loss and RTT, no bitrate."""

    target_bps: int | None = None
    loss_fraction: float = 0.0
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    bitrate: int  # bits/s the viewer receives on it (video + audio)
    live: bool = True


@dataclass(frozen=True, slots=True)
class Switch:
    target: str
    down: bool
    reason: Reason
    urgent: bool = False  # switch now (the current layer is gone): no keyframe wait
    drain: bool = False
    """Stop the current layer's video now, not at the target's keyframe: it overruns the link,
    so what it still sends fills the bottleneck queue the target's keyframe must then cross
    (lost or late there, the viewer waits a whole GOP for the next one)."""


@dataclass(frozen=True, slots=True)
class SelectorConfig:
    up_margin: float = 1.3
    hold: float = 3.0
    blind_hold: float = 8.0
    dip_hold: float = 5.0
    calm: float = 5.0  # s without congestion before a move down that make it a sudden drop
    dip_window: float = 30.0  # s after a sudden drop its retries go back to the layer it left
    probe_fit: float = 1.1  # a probe showed this x a layer's bitrate: it fits
    max_hold: float = 120.0
    settle: float = 15.0
    down_after: float = 1.0
    down_events: int = 2
    down_window: float = 4.0
    lossy: float = 0.1
    severe_loss: float = 0.2
    fit_margin: float = 0.9  # a layer fits a loss-implied rate at this share of it
    min_up_interval: float = 10.0
    min_down_interval: float = 1.5
    min_probe_down: float = 0.5  # a congestion event right after an up-switch: it failed


class LayerSelector:
    def __init__(
        self,
        current: str,
        *,
        pinned: str | None = None,
        config: SelectorConfig | None = None,
        now: float = 0.0,
    ) -> None:
        self.config = c = config or SelectorConfig()
        self.current = current
        self.pinned = pinned
        self.pending: Switch | None = None
        self.switches_up = 0
        self.switches_down = 0
        self._hold = c.hold
        self._blind_hold = c.blind_hold
        self._up_wait = c.min_up_interval
        self._up_reason: Reason | None = None  # what made the last up-switch
        self._events: deque[float] = deque()
        self._last_count: int | None = None
        self._last_switch = now
        self._quiet_since = now
        self._over_since: float | None = None
        self._fits_since: dict[str, float] = {}
        self._stepped_up_at: float | None = None
        self._calm_at: float | None = None  # last tick that ended ``calm`` s of calm
        self._leaving: str | None = None  # the layer a pending sudden drop leaves
        self._dip: tuple[float, str] | None = None  # (when, layer left) of the last sudden drop
        self._drop_loss = 0.0  # the loss a pending move down was decided at
        self._clean: int | None = None  # the last count of clean report windows
        self._clean_since: float | None = None  # first tick with a new clean one on this layer

    @property
    def switches(self) -> int:
        return self.switches_up + self.switches_down

    @property
    def hold(self) -> float:
        """The current up-switch hold with an estimate (doubles on failed up-switches)."""
        return self._hold

    def pin(self, layer: str | None) -> None:
        """Keep the viewer on ``layer`` (None: adapt again)."""
        self.pinned = layer

    def update(
        self,
        now: float,
        layers: Sequence[Layer],
        estimate: LinkEstimate | None = None,
        congestion: int = 0,
        probed_bps: int | None = None,
        *,
        clean: int | None = None,
    ) -> Switch | None:
        """The switch to make now, if any. ``layers``: the ladder, top first (its order, not
        the bitrates, says which is higher: a measured rate may be below a nominal one);
        ``congestion`` is a monotonic count; ``probed_bps`` what a probe just showed the link
        carries (``ProbeController.probed``); ``clean`` a monotonic count of receiver report
        windows that showed the layer arriving (``ReportLoss.clean``; None: not counted, every
        tick is evidence)."""
        c = self.config
        fresh = self._count(congestion, now)
        news = clean is None or (self._clean is not None and clean > self._clean)
        if news and self._clean_since is None:
            self._clean_since = now
        self._clean = clean
        up_at = self._stepped_up_at
        if up_at is not None and now - up_at >= c.settle:  # the last up-switch held
            self._stepped_up_at = None
            self._hold, self._blind_hold = c.hold, c.blind_hold
            self._up_wait = c.min_up_interval
        live = [x for x in layers if x.live]  # top first, as the ladder lists them
        if not live:
            return None
        by_name = {x.name: x for x in live}
        pending = self.pending
        if pending is not None:
            if pending.target in by_name:
                return None
            self.pending = None  # the target went away while we waited for its keyframe
        current = by_name.get(self.current)
        names = [x.name for x in live]
        if self.pinned is not None and self.pinned in by_name:
            if self.pinned != self.current:
                down = current is not None and by_name[self.pinned].bitrate < current.bitrate
                return self._start(Switch(self.pinned, down, "pin", urgent=current is None))
            return None
        target = estimate.target_bps if estimate is not None else None
        loss = estimate.loss_fraction if estimate is not None else 0.0
        if current is None:  # gone: the best that fits, at once
            fit = self._fitting(live, target, None)
            pick = fit or live[-1]
            return self._start(Switch(pick.name, True, "gone", urgent=True))
        if self.pinned is not None:
            return None  # pinned to a layer that is not live: stay on this one until it is
        # -- down --------------------------------------------------------------------------
        since_switch = now - self._last_switch
        if target is not None and current.bitrate > target:
            self._over_since = self._over_since if self._over_since is not None else now
        else:
            self._over_since = None
        probing = self._stepped_up_at is not None  # an up-switch not yet proven (``settle``)
        # the first layer is no switch: what its reports say is about it from the join on (a
        # Chromium viewer behind 500 kbit/s waited out the 1.5 s on 720p at 50 % loss)
        first = self.switches == 0
        wait = c.min_probe_down if probing or first else c.min_down_interval
        if since_switch >= wait and current is not live[-1]:
            over = self._over_since is not None and now - self._over_since >= c.down_after
            congested = len(self._events) >= c.down_events or (
                fresh and (probing or loss >= c.severe_loss)
            )
            if over or congested:
                implied = None
                if congested and loss >= c.lossy:
                    implied = int(current.bitrate * (1.0 - loss) * c.fit_margin)
                fit = self._fitting(live, target, implied)
                below = names.index(current.name) + 1
                step = live[below]
                pick = fit if fit is not None and fit.bitrate < current.bitrate else step
                reason: Reason = "estimate" if over else "congestion"
                calm_at = self._calm_at
                sudden = calm_at is not None and now - calm_at <= c.down_window
                self._leaving = current.name if sudden else None
                self._drop_loss = loss if congested else 1.0  # an estimate: the link's
                return self._start(Switch(pick.name, True, reason, drain=True))
        # -- up ----------------------------------------------------------------------------
        heard = self._clean_since
        calm_start = max(self._quiet_since, self._last_switch, heard or now)
        if heard is not None and self._over_since is None and now - calm_start >= c.calm:
            self._calm_at = now  # (before this tick's event, if any, ends the calm)
        if fresh or loss >= c.lossy:
            self._quiet_since = now
        higher = live[: names.index(current.name)]
        if not higher:
            self._fits_since.clear()
            return None
        if target is not None:
            for x in higher:
                if x.bitrate * c.up_margin <= target:
                    self._fits_since.setdefault(x.name, now)
                else:
                    self._fits_since.pop(x.name, None)
            if since_switch < self._up_wait:
                return None
            if probed_bps is not None and not fresh:
                for x in higher:  # the highest the probe showed room for
                    if x.bitrate * c.probe_fit <= probed_bps:
                        return self._start(Switch(x.name, False, "probed"))
            for x in higher:  # the highest that has fitted long enough
                at = self._fits_since.get(x.name)
                if at is not None and now - at >= self._hold:
                    return self._start(Switch(x.name, False, "estimate"))
            return None
        quiet = now - max(self._quiet_since, self._last_switch)
        dip = self._dip
        in_dip = dip is not None and now - dip[0] <= c.dip_window
        hold = min(self._blind_hold, c.dip_hold) if in_dip else self._blind_hold
        if since_switch >= self._up_wait and quiet >= hold:
            back = dip[1] if dip is not None and in_dip else None
            pick = next((x for x in higher if x.name == back), higher[-1])
            return self._start(Switch(pick.name, False, "probe"))
        return None

    @staticmethod
    def _fitting(live: list[Layer], target: int | None, implied: int | None) -> Layer | None:
        """The highest layer within the estimate (or the loss-implied rate), if either is known."""
        limit = target if target is not None else implied
        if limit is None:
            return None
        return next((x for x in live if x.bitrate <= limit), live[-1])

    def _count(self, congestion: int, now: float) -> bool:
        last, self._last_count = self._last_count, congestion
        fresh = last is not None and congestion > last
        if fresh:
            self._events.extend([now] * min(congestion - (last or 0), 16))
        while self._events and now - self._events[0] > self.config.down_window:
            self._events.popleft()
        return fresh

    def _start(self, switch: Switch) -> Switch:
        self.pending = switch
        return switch

    def switched(self, now: float) -> None:
        """The pending switch happened (the target's keyframe went out)."""
        switch, self.pending = self.pending, None
        if switch is None:
            return
        c = self.config
        held = now - self._last_switch
        left, self.current = self.current, switch.target
        self._last_switch = now
        self._events.clear()
        self._over_since = None
        self._fits_since.clear()
        leaving, self._leaving = self._leaving, None
        self._calm_at = self._clean_since = None
        if switch.down:
            self.switches_down += 1
            failed = self._stepped_up_at is not None and now - self._stepped_up_at < c.settle
            severe = self._drop_loss >= c.severe_loss
            if failed and switch.reason in ("estimate", "congestion"):
                if not severe:
                    self._dip = None  # mild loss, not a dip's collapse: retry as rarely as ever
                self._hold = min(c.max_hold, self._hold * 2)
                self._blind_hold = min(c.max_hold, self._blind_hold * 2)
                if self._up_reason == "probed":
                    self._up_wait = min(c.max_hold, self._up_wait * 2)
            elif switch.reason in ("estimate", "congestion") and (
                held >= c.settle or leaving is not None
            ):  # a sudden drop
                self._blind_hold = min(self._blind_hold, c.dip_hold)
                self._dip = (now, left) if severe else None
            self._stepped_up_at = None
        else:
            self.switches_up += 1
            self._stepped_up_at = now
            self._up_reason = switch.reason

    def abandoned(self, now: float) -> None:
        """The pending switch could not be made (no keyframe in time): judged again later."""
        switch, self.pending = self.pending, None
        if switch is not None and not switch.down:
            self._last_switch = now  # a failed probe waits as long as a made one
            self._hold = min(self.config.max_hold, self._hold * 2)
            self._blind_hold = min(self.config.max_hold, self._blind_hold * 2)
