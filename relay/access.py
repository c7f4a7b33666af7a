"""Who may publish to or watch a room: token checks plus the anonymous-audience switch."""

from __future__ import annotations

import secrets

from .errors import Unauthorized
from .tokens import Role, TokenAuthority, bearer_token


class AccessPolicy:
    def __init__(self, tokens: TokenAuthority, *, anonymous_audience: bool = False) -> None:
        self.tokens = tokens
        self.anonymous_audience = anonymous_audience

    def authorize(
        self, room: str, role: Role, authorization: str | None, query_token: str | None = None
    ) -> str:
        """The subject allowed to act as ``role`` in ``room``; raises 401/403 otherwise."""
        token = bearer_token(authorization, query_token)
        if token is None:
            if role == "audience" and self.anonymous_audience:
                return "anonymous-" + secrets.token_hex(4)
            raise Unauthorized(f"a Bearer token with role {role!r} is required")
        return self.tokens.verify(token, room=room, role=role).subject
