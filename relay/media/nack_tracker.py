"""Which RTP packets of one received SSRC are missing, and when to ask for them (again).

aiortc's receiver sends a NACK only when a new gap appears, with every packet still missing in
it: a lost retransmission is asked for again only if a later packet happens to be lost too, and
on a link with little loss it never is, so the frame it broke waits out the reassembly budget
and ends in a skip and a keyframe request. Here each missing packet is NACKed when its gap
appears, then again after ``max(rtt, min_interval)`` (the round trip measured from NACKs that
were answered at the first try), each further time after twice the wait before (a queue that
grew since the RTT was measured must not turn repeats into a retransmission storm), at most
``max_tries`` times, and given up once it can no longer be played: older than the reassembly
budget, or passed by the frame assembler. With a ``RepairWait`` (relay/media/repair_wait.py)
that budget is its wait, and every missing packet that arrives feeds it its repair time (gap
seen -> arrival), also one that comes after it was given up (remembered a while for that).

Sans-I/O: ``packet`` and ``due`` take ``now``; ``next_deadline`` says when ``due`` has work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.media.repair_wait import RepairWait

_MOD = 1 << 16
_HALF = 1 << 15


@dataclass(frozen=True, slots=True)
class NackPolicy:
    max_tries: int = 4
    """NACKs per missing packet, the first included (1: no re-NACK, as aiortc)."""
    min_interval: float = 0.02
    """Never ask for one packet again sooner than this (seconds; the first repeat's wait, each
    further one waits twice the one before)."""
    initial_rtt: float = 0.05
    """The round trip assumed before one is measured."""
    budget: float = 0.1
    """Seconds a missing packet stays wanted after its gap appeared (the frame assembler's
    wait: past it the frame is skipped and a keyframe asked for)."""
    max_missing: int = 512
    """Missing packets tracked at most (the oldest are given up first)."""
    max_jump: int = 3000
    """A sequence number further ahead than this is a restart, not a gap of lost packets."""
    max_given_up: int = 256
    """Given-up packets remembered at most, so that a retransmission arriving after all still
    measures a repair time."""


@dataclass(slots=True)
class NackStats:
    missing: int = 0
    """Packets found missing (gaps)."""
    nacked: int = 0
    """NACK requests sent, counting every packet each time it is asked for."""
    renacked: int = 0
    """Of those, the second and later requests for a packet."""
    recovered: int = 0
    """Missing packets that arrived after all (retransmitted, or late)."""
    recovered_after_renack: int = 0
    """Of those, packets that had been asked for more than once."""
    expired: int = 0
    """Given up: older than the budget, out of tries, or passed by the assembler."""
    late: int = 0
    """Given-up packets that arrived after all (too late for their frame)."""


@dataclass(slots=True)
class _Missing:
    since: float
    sent_at: float
    tries: int


@dataclass(slots=True)
class NackTracker:
    """One SSRC's missing packets (16-bit RTP sequence numbers in, 16-bit out)."""

    policy: NackPolicy = field(default_factory=NackPolicy)
    stats: NackStats = field(default_factory=NackStats)
    rtt: float | None = None
    """Smoothed round trip from first-try NACKs to their retransmissions; None before one."""
    repair: RepairWait | None = None
    """Fed every repair time; its wait is the budget (None: ``policy.budget``)."""
    _highest: int | None = None  # unwrapped
    _missing: dict[int, _Missing] = field(default_factory=dict)  # unwrapped seq -> state
    _given_up: dict[int, _Missing] = field(default_factory=dict)  # oldest first

    def packet(self, sequence_number: int, now: float) -> list[int]:
        """A packet arrived: the sequence numbers to NACK now (the gap it opened)."""
        seq = self._unwrap(sequence_number)
        highest = self._highest
        if highest is None or abs(seq - highest) > self.policy.max_jump:
            self._restart(seq)  # the first packet, or the sender started over
            return []
        if seq <= highest:
            state = self._missing.pop(seq, None)
            if state is not None:
                self.stats.recovered += 1
                if state.tries > 1:
                    self.stats.recovered_after_renack += 1
            else:
                state = self._given_up.pop(seq, None)
                if state is None:
                    return []  # a duplicate, or never missing
                self.stats.late += 1
            if state.tries == 1 and now > state.sent_at:  # answered at the first try
                sample = now - state.sent_at
                self.rtt = sample if self.rtt is None else 0.875 * self.rtt + 0.125 * sample
            if self.repair is not None:
                self.repair.sample(now - state.since)
            return []
        gap = range(highest + 1, seq)
        self._highest = seq
        for missing in gap:
            self._missing[missing] = _Missing(now, now, 1)
        self.stats.missing += len(gap)
        self.stats.nacked += len(gap)
        self._bound()
        return [s % _MOD for s in gap]

    def due(self, now: float) -> list[int]:
        """Sequence numbers to ask for again now (each counted as asked); gives up those that
        can no longer be played or have had their tries."""
        policy = self.policy
        interval, budget = self.interval, self.budget
        out: list[int] = []
        for seq, state in list(self._missing.items()):
            waited = now - state.sent_at >= interval * (1 << (state.tries - 1))
            if now - state.since >= budget or (state.tries >= policy.max_tries and waited):
                self._give_up(seq)
            elif state.tries < policy.max_tries and waited:
                state.tries += 1
                state.sent_at = now
                out.append(seq % _MOD)
        self.stats.nacked += len(out)
        self.stats.renacked += len(out)
        return out

    def played(self, next_sequence: int) -> None:
        """The frame assembler waits for ``next_sequence`` (16-bit) now: anything missing
        before it can no longer reach a viewer."""
        if self._highest is None or not self._missing:
            return
        cut = self._unwrap(next_sequence)
        for seq in [s for s in self._missing if s < cut]:
            self._give_up(seq)

    def next_deadline(self) -> float | None:
        """When ``due`` next has something to do (None: nothing is missing)."""
        if not self._missing:
            return None
        interval, budget = self.interval, self.budget
        return min(
            min(s.sent_at + interval * (1 << (s.tries - 1)), s.since + budget)
            for s in self._missing.values()
        )

    @property
    def interval(self) -> float:
        """The first repeat's wait: the round trip, or the repair time if longer (a clean
        round-trip sample needs a first-try answer that came before the repeat; behind a
        full queue none does, and repeats sooner than a repair takes only ask twice for
        retransmissions on their way)."""
        rtt = self.policy.initial_rtt if self.rtt is None else self.rtt
        repair = self.repair
        if repair is not None and repair.smoothed is not None:
            rtt = max(rtt, repair.smoothed)
        return max(self.policy.min_interval, rtt)

    @property
    def budget(self) -> float:
        """Seconds a missing packet stays wanted after its gap appeared."""
        return self.policy.budget if self.repair is None else self.repair.wait

    @property
    def pending(self) -> int:
        return len(self._missing)

    def _give_up(self, seq: int) -> None:
        given_up = self._given_up
        given_up[seq] = self._missing.pop(seq)
        self.stats.expired += 1
        if len(given_up) > self.policy.max_given_up:
            del given_up[next(iter(given_up))]

    def _restart(self, seq: int) -> None:
        self.stats.expired += len(self._missing)
        self._missing.clear()
        self._given_up.clear()
        self._highest = seq

    def _bound(self) -> None:
        excess = len(self._missing) - self.policy.max_missing
        if excess > 0:
            for seq in sorted(self._missing)[:excess]:
                self._give_up(seq)

    def _unwrap(self, sequence_number: int) -> int:
        """The 16-bit number as the unwrapped one nearest the highest seen."""
        ref = self._highest
        if ref is None:
            return sequence_number
        delta = (sequence_number - ref) % _MOD
        if delta >= _HALF:
            delta -= _MOD
        return ref + delta
