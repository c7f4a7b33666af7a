"""Who may publish to or watch a room: token checks, revocations, the anonymous-audience switch."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.auth.tokens import STAGE_GUEST_PREFIX, Role, TokenAuthority, bearer_token
from relay.errors import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request was allowed as; ``token_id`` is empty for anonymous viewers (and for
    tokens minted without a ``jti``)."""

    subject: str
    token_id: str
    expires_at: float
    anonymous: bool = False

    @property
    def stage_guest(self) -> bool:
        """An audience member's token for the stage: publishes, never acts for the room (by
        its subject, so a restarted node that forgot the invitation still knows)."""
        return self.subject.startswith(STAGE_GUEST_PREFIX)


class AccessPolicy:
    def __init__(
        self,
        tokens: TokenAuthority,
        *,
        anonymous_audience: bool = False,
        room_is_private: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        operator_key: str = "",
        revoked_elsewhere: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``operator_key``: a Bearer value that may end or patch any session (empty: none).
        ``revoked_elsewhere(room, token_id)``: revocations another node made (an edge asks the
        room's origin through the cluster's room policies)."""
        self.tokens = tokens
        self._operator_key = operator_key.encode()
        self.anonymous_audience = anonymous_audience
        self._room_is_private = room_is_private or (lambda room: False)
        self._clock = clock
        self._revoked_elsewhere = revoked_elsewhere
        # token id -> (expiry, room); kept until the token expires
        self._revoked: dict[str, tuple[float, str]] = {}

    def revoke(self, token_id: str, expires_at: float, room: str = "") -> None:
        """Refuse this token from now on (a kicked anchor cannot come straight back). With
        ``room``, the edges learn it too (``revoked_in``)."""
        if token_id:
            self._revoked[token_id] = (expires_at, room)
            self._forget_expired()

    def _forget_expired(self) -> None:
        now = self._clock()
        for tid in [t for t, (exp, _) in self._revoked.items() if exp < now]:
            del self._revoked[tid]

    def revoked_in(self) -> dict[str, tuple[str, ...]]:
        """Room -> the ids of its tokens revoked here and not yet expired (sorted), for the
        room policies the origin publishes."""
        self._forget_expired()
        rooms: dict[str, list[str]] = {}
        for tid, (_, room) in self._revoked.items():
            if room:
                rooms.setdefault(room, []).append(tid)
        return {room: tuple(sorted(ids)) for room, ids in rooms.items()}

    def authorize(
        self, room: str, role: Role, authorization: str | None, query_token: str | None = None
    ) -> Grant:
        """The grant to act as ``role`` in ``room``; raises 401/403 otherwise."""
        token = bearer_token(authorization, query_token)
        if token is None:
            if role == "audience" and self.anonymous_audience and not self._room_is_private(room):
                return Grant("anonymous-" + secrets.token_hex(4), "", float("inf"), anonymous=True)
            raise Unauthorized(f"a Bearer token with role {role!r} is required")
        try:
            claims = self.tokens.verify(token, room=room, role=role)
        except Forbidden:
            if role != "audience":
                raise
            # whoever may publish to a room may watch it (co-hosts and call participants pull
            # each other's own streams with their anchor tokens); a token of another room or
            # role still fails here
            claims = self.tokens.verify(token, room=room, role="anchor")
        if self.is_revoked(room, claims.token_id):
            raise Unauthorized("token has been revoked")
        return Grant(claims.subject, claims.token_id, claims.expires_at)

    def is_revoked(self, room: str, token_id: str) -> bool:
        """Revoked here, or (on an edge) at the room's origin; tokens without an id never are."""
        elsewhere = self._revoked_elsewhere
        return bool(token_id) and (
            token_id in self._revoked or (elsewhere is not None and elsewhere(room, token_id))
        )

    def standing(self, room: str, grant: Grant) -> str | None:
        """Why a grant given earlier no longer holds (expired, revoked); None while it does.
        For what outlives its request: an open room-channel socket."""
        if self._clock() >= grant.expires_at:
            return "token expired"
        if self.is_revoked(room, grant.token_id):
            return "token has been revoked"
        return None

    def authorize_any(
        self,
        room: str,
        roles: tuple[Role, ...],
        authorization: str | None,
        query_token: str | None = None,
    ) -> Grant:
        """The grant for the first of ``roles`` the request qualifies for; the first role's
        refusal otherwise."""
        first: Unauthorized | Forbidden | None = None
        for role in roles:
            try:
                return self.authorize(room, role, authorization, query_token)
            except (Unauthorized, Forbidden) as exc:
                first = first or exc
        assert first is not None, "no roles given"
        raise first

    def authorize_session(
        self,
        room: str,
        roles: tuple[Role, ...],
        owner: Grant,
        authorization: str | None,
        query_token: str | None = None,
    ) -> None:
        """May this request change or end the session ``owner`` opened? Only with a token for
        the room whose subject is the owner's (co-hosts can read each other's session URLs),
        or with the operator key. A session opened without a token is reached through its
        unguessable URL alone, even after its room turned private."""
        token = bearer_token(authorization, query_token)
        if token is None and owner.anonymous:
            return
        if (
            token is not None
            and self._operator_key
            and secrets.compare_digest(token.encode(), self._operator_key)
        ):
            return
        grant = self.authorize_any(room, roles, authorization, query_token)
        if owner.anonymous:
            return
        if not secrets.compare_digest(grant.subject.encode(), owner.subject.encode()):
            raise Forbidden(
                "this session belongs to another subject: only its own token (or the operator "
                "key) may change or end it"
            )
