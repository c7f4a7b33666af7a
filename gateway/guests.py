"""Audience on stage, the async side: drives ``gateway.stage.guests.StageDesk`` with the wall
clock, mints each approved guest's anchor token, ends a guest's WHIP session when it leaves or is
removed, reports every step as a webhook and wakes the requester's long-poll."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relay.auth.access import AccessPolicy
from relay.auth.tokens import TokenAuthority
from relay.errors import Conflict, NotFound, StagecastError

from .stage.guests import StageDesk, StageEvent, StageRequest

EventSink = Callable[[str, dict[str, Any]], None]
CloseAnchor = Callable[[str, str, str], Awaitable[None]]  # room, session id, reason
Clock = Callable[[], float]


class StageGuests:
    """One per origin, owned by the app (``Gateway.guests``)."""

    def __init__(
        self,
        desk: StageDesk,
        tokens: TokenAuthority,
        access: AccessPolicy,
        events: EventSink,
        close_anchor: CloseAnchor,
        *,
        token_ttl: float,
        clock: Clock = time.time,
    ) -> None:
        self.desk = desk
        self._tokens = tokens
        self._access = access
        self._events = events
        self._close_anchor = close_anchor
        self.token_ttl = token_ttl
        self._clock = clock
        self._guest_tokens: dict[str, str] = {}  # request id -> its anchor token
        self._changed: dict[str, asyncio.Event] = {}  # request id -> set on its next change

    # -- events -------------------------------------------------------------------------------
    def observe(self, kind: str, data: dict[str, Any]) -> None:
        """A room event (the room's sinks): follows the guests' WHIP sessions."""
        room, subject, aid = data.get("room"), data.get("subject"), data.get("anchor_id")
        if not (isinstance(room, str) and isinstance(subject, str) and isinstance(aid, str)):
            return
        now = self._clock()
        if kind == "anchor.joined":
            self._report(self.desk.anchor_joined(room, subject, aid, now))
        elif kind == "anchor.left":
            reason = str(data.get("reason", ""))
            steps = self.desk.anchor_left(room, subject, aid, reason, now)
            for step in steps:
                self._revoke(step.request)
            self._report(steps)

    def _report(self, steps: list[StageEvent]) -> None:
        for step in steps:
            self._events(step.kind, step.data())
            self._wake(step.request)

    def _wake(self, request: StageRequest) -> None:
        event = self._changed.pop(request.id, None)
        if event is not None:
            event.set()

    def _revoke(self, request: StageRequest) -> None:
        token = self._guest_tokens.pop(request.id, None)
        if token is None:
            return
        with contextlib.suppress(StagecastError):
            claims = self._tokens.claims(token)
            self._access.revoke(claims.token_id, claims.expires_at, request.room)

    # -- steps --------------------------------------------------------------------------------
    def sweep(self) -> None:
        steps = self.desk.sweep(self._clock())
        for step in steps:
            self._revoke(step.request)
        self._report(steps)
        known = {r.id for r in self.desk}
        for rid in [rid for rid in self._changed if rid not in known]:  # forgotten requests
            self._changed.pop(rid).set()

    def ask(self, room: str, name: str, requester: str, rate_key: str) -> StageRequest:
        request, steps = self.desk.ask(room, name, requester, rate_key, self._clock())
        for step in steps:
            self._revoke(step.request)
        self._report(steps)
        return request

    def decide(self, room: str, request_id: str, approve: bool, by: str) -> StageRequest:
        self.sweep()
        step = self.desk.decide(
            room, request_id, approve, by, self._clock(), token_ttl=self.token_ttl
        )
        if approve:
            request = step.request
            token = self._tokens.mint(room, "anchor", request.subject, self.token_ttl)
            self._guest_tokens[request.id] = token
        self._report([step])
        return step.request

    async def leave(self, room: str, request_id: str, by: str | None) -> StageRequest:
        """The requester leaves (``by`` None) or an anchor/operator removes the guest: its token
        is revoked and its WHIP session, if any, ends (the program drops its tile)."""
        step = self.desk.leave(room, request_id, self._clock(), by=by)
        request = step.request
        self._revoke(request)
        self._report([step])
        if request.anchor_id is not None:
            with contextlib.suppress(NotFound, Conflict):
                await self._close_anchor(room, request.anchor_id, "kicked" if by else "deleted")
        return request

    def viewer_token(self, room: str, ttl: float) -> str:
        """An audience token an anchor's page pulls its co-hosts with (private rooms too)."""
        return self._tokens.mint(room, "audience", "stage-cohost", ttl)

    def token_of(self, request: StageRequest) -> str | None:
        """The guest's anchor token while it may use it (approved or on stage)."""
        if request.state not in ("approved", "joined"):
            return None
        return self._guest_tokens.get(request.id)

    async def wait(self, room: str, request_id: str, after: int, timeout: float) -> StageRequest:
        """The request once its version passes ``after``, or as it is after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sweep()
            request = self.desk.get(room, request_id)
            left = deadline - time.monotonic()
            if request.version > after or left <= 0:
                return request
            event = self._changed.setdefault(request_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
