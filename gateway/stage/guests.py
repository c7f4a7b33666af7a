"""Audience on stage: a viewer raises a hand, an anchor or operator approves or refuses, the
approved guest publishes as an anchor of its own subject and later leaves (or is removed).

Sans-I/O: every method takes ``now`` and returns the ``StageEvent`` values to report (webhooks,
waiters); the HTTP side (``gateway.api_stage``) mints tokens, ends WHIP sessions and wakes the
long-polls. A request's guest subject (``guest-<id>``) is new for each request, so a guest can
never take over (WHIP "same subject replaces") an anchor's session or another guest's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from relay.auth.tokens import STAGE_GUEST_PREFIX
from relay.errors import Conflict, NotFound, TooManyRequests
from relay.http.ratelimit import ClientRateLimiter

RequestState = Literal[
    "pending", "approved", "refused", "withdrawn", "joined", "left", "removed", "expired"
]
OPEN_STATES: frozenset[str] = frozenset({"pending", "approved", "joined"})
GUEST_PREFIX = STAGE_GUEST_PREFIX


@dataclass(frozen=True, slots=True)
class StageRequest:
    id: str
    room: str
    name: str  # the display name the viewer gave
    requester: str  # who asked: an audience token's subject, or "anonymous"
    subject: str  # the guest's anchor-token subject (guest-<id>)
    key: str  # the requester's secret for its own resource (poll, leave)
    state: RequestState
    created_at: float  # wall-clock (time.time()) of each step
    changed_at: float
    version: int = 0  # bumped on every change (long-polls wait for a newer one)
    decided_by: str | None = None  # who approved / refused / removed
    token_expires_at: float | None = None  # the guest token's expiry (approved)
    anchor_id: str | None = None  # the guest's WHIP session while on stage
    reason: str | None = None  # why it left the stage

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True, slots=True)
class StageEvent:
    """One step to report: ``kind`` is the webhook type (stage.request, stage.approved,
    stage.refused, stage.joined, stage.left)."""

    kind: str
    request: StageRequest

    def data(self) -> dict[str, object]:
        r = self.request
        out: dict[str, object] = {
            "room": r.room,
            "request_id": r.id,
            "name": r.name,
            "subject": r.subject,
            "state": r.state,
        }
        if r.decided_by is not None:
            out["by"] = r.decided_by
        if r.anchor_id is not None:
            out["anchor_id"] = r.anchor_id
        if r.reason is not None:
            out["reason"] = r.reason
        return out


@dataclass(frozen=True, slots=True)
class DeskLimits:
    per_requester_rate: float = 0.2  # requests per second per requester, sustained
    per_requester_burst: int = 3
    max_open: int = 50  # open requests (pending / approved / on stage) per room
    keep_finished: float = 300.0  # seconds a finished request stays readable
    pending_timeout: float = 600.0  # a hand nobody answered is lowered after this (expired)


class StageDesk:
    """Every room's stage requests on this node (the origin, where the anchors are)."""

    def __init__(self, limits: DeskLimits | None = None) -> None:
        self.limits = limits or DeskLimits()
        self._rooms: dict[str, dict[str, StageRequest]] = {}
        self._by_subject: dict[str, StageRequest] = {}
        self._rate = ClientRateLimiter(
            self.limits.per_requester_rate, self.limits.per_requester_burst
        )

    # -- reading -----------------------------------------------------------------------------
    def requests(self, room: str) -> list[StageRequest]:
        return list(self._rooms.get(room, {}).values())

    def get(self, room: str, request_id: str) -> StageRequest:
        request = self._rooms.get(room, {}).get(request_id)
        if request is None:
            raise NotFound(f"no stage request {request_id!r} in room {room!r}")
        return request

    def by_subject(self, subject: str) -> StageRequest | None:
        return self._by_subject.get(subject)

    def is_guest(self, room: str, subject: str) -> bool:
        r = self._by_subject.get(subject)
        return r is not None and r.room == room

    def seats_taken(self, room: str) -> int:
        """Approved guests not yet on stage (their seat is held for them)."""
        return sum(1 for r in self.requests(room) if r.state == "approved")

    def __iter__(self) -> Iterator[StageRequest]:
        for reqs in list(self._rooms.values()):
            yield from list(reqs.values())

    # -- the requester -------------------------------------------------------------------------
    def ask(
        self, room: str, name: str, requester: str, rate_key: str, now: float
    ) -> tuple[StageRequest, list[StageEvent]]:
        """A raised hand. 429 when ``rate_key`` asks too often or the room has too many open."""
        events = self.sweep(now)
        wait = self._rate.check(f"{room}\n{rate_key}", now)
        if wait is not None:
            raise TooManyRequests("too many stage requests; wait", retry_after=wait)
        if sum(1 for r in self.requests(room) if r.open) >= self.limits.max_open:
            raise TooManyRequests(f"room {room!r} has too many open stage requests", retry_after=5)
        rid = secrets.token_hex(6)
        request = StageRequest(
            id=rid,
            room=room,
            name=name,
            requester=requester,
            subject=GUEST_PREFIX + rid,
            key=secrets.token_urlsafe(24),
            state="pending",
            created_at=now,
            changed_at=now,
        )
        self._put(request)
        events.append(StageEvent("stage.request", request))
        return request, events

    def leave(self, room: str, request_id: str, now: float, *, by: str | None = None) -> StageEvent:
        """The requester withdraws or steps down (``by`` None), or an anchor/operator removes
        the guest (``by``: who). Idempotent on a finished request (409 with its state)."""
        request = self.get(room, request_id)
        if not request.open:
            raise Conflict(f"the stage request is already {request.state}")
        if request.state == "pending":
            state: RequestState = "withdrawn" if by is None else "refused"
        else:
            state = "left" if by is None else "removed"
        kind = "stage.refused" if state == "refused" else "stage.left"
        done = self._change(request, now, state=state, decided_by=by or request.decided_by)
        return StageEvent(kind, done)

    # -- anchors and operators -------------------------------------------------------------
    def decide(
        self, room: str, request_id: str, approve: bool, by: str, now: float, *, token_ttl: float
    ) -> StageEvent:
        """Approve (the caller mints the token) or refuse a pending request; 409 otherwise."""
        request = self.get(room, request_id)
        if request.state != "pending":
            raise Conflict(f"the stage request is {request.state}, not pending")
        if approve:
            done = self._change(
                request, now, state="approved", decided_by=by, token_expires_at=now + token_ttl
            )
            return StageEvent("stage.approved", done)
        return StageEvent(
            "stage.refused", self._change(request, now, state="refused", decided_by=by)
        )

    # -- what the WHIP side reports (anchor.joined / anchor.left) ----------------------------
    def anchor_joined(
        self, room: str, subject: str, anchor_id: str, now: float
    ) -> list[StageEvent]:
        request = self._by_subject.get(subject)
        if request is None or request.room != room or request.state not in ("approved", "joined"):
            return []
        rejoined = request.state == "joined"
        done = self._change(request, now, state="joined", anchor_id=anchor_id)
        return [] if rejoined else [StageEvent("stage.joined", done)]

    def anchor_left(
        self, room: str, subject: str, anchor_id: str, reason: str, now: float
    ) -> list[StageEvent]:
        """The guest's WHIP session ended by itself (its DELETE, a timeout, its network)."""
        request = self._by_subject.get(subject)
        if (
            request is None
            or request.room != room
            or request.state != "joined"
            or request.anchor_id != anchor_id
            or reason == "replaced"
        ):
            return []
        done = self._change(request, now, state="left", reason=reason)
        return [StageEvent("stage.left", done)]

    # -- time ---------------------------------------------------------------------------------
    def sweep(self, now: float) -> list[StageEvent]:
        """Approved guests whose token expired unused lose their seat, hands nobody answered
        are lowered; finished requests are forgotten after ``keep_finished``."""
        events: list[StageEvent] = []
        lim = self.limits
        for request in list(self):
            exp = request.token_expires_at
            if request.state == "approved" and exp is not None and now > exp:
                done = self._change(request, now, state="expired", reason="token expired unused")
                events.append(StageEvent("stage.left", done))
            elif request.state == "pending" and now - request.created_at > lim.pending_timeout:
                done = self._change(request, now, state="expired", reason="no answer")
                events.append(StageEvent("stage.left", done))
            elif not request.open and now - request.changed_at > lim.keep_finished:
                self._drop(request)
        return events

    # -- internals ----------------------------------------------------------------------------
    def _put(self, request: StageRequest) -> None:
        self._rooms.setdefault(request.room, {})[request.id] = request
        self._by_subject[request.subject] = request

    def _drop(self, request: StageRequest) -> None:
        reqs = self._rooms.get(request.room, {})
        reqs.pop(request.id, None)
        if not reqs:
            self._rooms.pop(request.room, None)
        self._by_subject.pop(request.subject, None)

    def _change(self, request: StageRequest, now: float, **changes: object) -> StageRequest:
        done = replace(request, changed_at=now, version=request.version + 1, **changes)  # type: ignore[arg-type]
        self._put(done)
        return done
