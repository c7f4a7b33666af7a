"""Room- and role-scoped HMAC tokens (JWT, HS256), in the spirit of TRTC's UserSig."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Literal, TypeGuard

import jwt

from relay.errors import Forbidden, Unauthorized

Role = Literal["anchor", "audience"]
ROLES: tuple[Role, ...] = ("anchor", "audience")
STAGE_GUEST_PREFIX = "guest-"
"""The subject of an anchor token minted for an audience member invited on stage: it may
publish, never act for the room (approve requests, link rooms, send commands)."""
ALGORITHM = "HS256"


LINK_SUBJECT_PREFIX = "node:"
"""Subject prefix of the tokens relay nodes pull each other's streams with (``link_token``)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    room: str
    role: Role
    subject: str
    expires_at: int
    token_id: str


class TokenAuthority:
    """Mints and verifies tokens with one shared secret (every node of a cluster holds it)."""

    def __init__(self, secret: str, *, issuer: str = "stagecast", leeway: float = 5.0) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("token secret must be at least 32 bytes")
        self._secret = secret
        self._issuer = issuer
        self._leeway = leeway

    def mint(
        self, room: str, role: Role, subject: str, ttl: float, *, now: float | None = None
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if not clean_claim(room) or not clean_claim(subject):
            raise ValueError("room and subject must be short printable strings")
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "room": room,
            "role": role,
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, *, room: str, role: Role) -> TokenClaims:
        """Claims of a valid token for ``room`` and ``role``; Unauthorized/Forbidden otherwise."""
        claims = self.claims(token)
        if not secrets.compare_digest(claims.room.encode(), room.encode()):
            raise Forbidden("token is for another room")
        if claims.role != role:
            raise Forbidden(f"token role {claims.role!r} may not act as {role!r}")
        return claims

    def claims(self, token: str) -> TokenClaims:
        """Claims of a token this node signed, whatever its room and role; Unauthorized when it
        is forged, expired or malformed."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired") from exc
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
        if not isinstance(claims, dict):
            raise Unauthorized("token claims are not an object")
        claimed_room, claimed_role = claims.get("room"), claims.get("role")
        if not clean_claim(claimed_room, 256) or claimed_role not in ROLES:
            raise Unauthorized("token lacks room or role")
        subject, token_id = claims.get("sub"), claims.get("jti", "")
        if not clean_claim(subject, 256) or not (token_id == "" or clean_claim(token_id, 256)):
            raise Unauthorized("token subject or id is not a short printable string")
        return TokenClaims(
            room=claimed_room,
            role=claimed_role,
            subject=subject,
            expires_at=int(claims["exp"]),
            token_id=token_id,
        )


def clean_claim(value: object, max_len: int = 256) -> TypeGuard[str]:
    """A claim we compare, log and echo: a non-empty printable string that UTF-8 can encode
    (JSON lets a signed token carry lone surrogates, which ``str.encode`` refuses)."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len or not value.isprintable():
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def bearer_token(authorization: str | None, query_token: str | None = None) -> str | None:
    """Token from ``Authorization: Bearer`` (preferred) or an ``access_token`` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization must be a Bearer token")
        return value.strip()
    return query_token or None
