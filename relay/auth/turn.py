"""ICE servers handed to clients, with time-limited TURN credentials (the "TURN REST API",
draft-uberti-behave-turn-rest, as coturn's ``use-auth-secret`` / ``static-auth-secret`` checks
them): username ``<expiry unix time>:<subject>``, password ``base64(HMAC-SHA1(secret, username))``.

The TURN server and this node share the secret; clients only ever see a username and password that
stop working at the expiry (coturn refuses an allocation whose username's time has passed).
Sans-I/O: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:-]")
MAX_SUBJECT = 64


@dataclass(frozen=True, slots=True)
class IceServer:
    """One ``RTCIceServer``: URLs sharing one credential (none for STUN)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def as_json(self) -> dict[str, object]:
        """The ``RTCIceServer`` dictionary a browser takes."""
        out: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
            out["credential"] = self.credential
        return out


def turn_rest_username(subject: str, expires_at: int) -> str:
    """``<expiry>:<subject>``; the subject is reduced to a safe, short token (it goes into a
    quoted Link parameter and the TURN server's logs)."""
    safe = _UNSAFE.sub("_", subject)[:MAX_SUBJECT] or "anonymous"
    return f"{expires_at}:{safe}"


def turn_rest_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True)
class TurnRest:
    """TURN URLs whose server checks credentials derived from ``secret`` (coturn
    ``use-auth-secret``); each credential lives ``ttl`` seconds."""

    urls: tuple[str, ...]
    secret: str
    ttl: int = 86400

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("TurnRest needs at least one turn: or turns: URL")
        if not self.secret:
            raise ValueError("TurnRest needs the shared secret")
        if self.ttl <= 0:
            raise ValueError("TurnRest.ttl must be positive")

    def issue(self, subject: str, now: float) -> IceServer:
        username = turn_rest_username(subject, int(now) + self.ttl)
        return IceServer(self.urls, username, turn_rest_password(self.secret, username))


def ice_servers(
    static_urls: Sequence[str], turn: TurnRest | None, subject: str, now: float
) -> tuple[IceServer, ...]:
    """The servers one client gets: the configured URLs (STUN, or TURN without credentials),
    then TURN with a credential issued to ``subject`` now."""
    out: list[IceServer] = []
    if static_urls:
        out.append(IceServer(tuple(static_urls)))
    if turn is not None:
        out.append(turn.issue(subject, now))
    return tuple(out)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(servers: Sequence[IceServer]) -> tuple[str, ...]:
    """One RFC 8288 link-value per URL in the form RFC 9725 4.6 gives for WHIP (and WHEP):
    ``<turn:...>; rel="ice-server"; username="..."; credential="..."; credential-type="password"``
    (the last one is what draft versions and several clients still read; "password" is the
    only type)."""
    links: list[str] = []
    for server in servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (
                    f"; username={_quoted(server.username)}"
                    f"; credential={_quoted(server.credential)}"
                    '; credential-type="password"'
                )
            links.append(link)
    return tuple(links)


@dataclass(frozen=True, slots=True)
class IceDirectory:
    """What a node tells its clients about ICE servers: fixed URLs and, with ``turn``, a fresh
    TURN credential per request. Empty: host candidates only (no Link header)."""

    static_urls: tuple[str, ...] = ()
    turn: TurnRest | None = None

    def servers(self, subject: str, now: float) -> tuple[IceServer, ...]:
        return ice_servers(self.static_urls, self.turn, subject, now)

    def links(self, subject: str, now: float) -> tuple[str, ...]:
        return ice_server_links(self.servers(subject, now))

    def servers_without_turn(self) -> tuple[IceServer, ...]:
        """The fixed URLs only, for a caller that showed no credential."""
        return ice_servers(self.static_urls, None, "", 0.0)

    def public_links(self) -> tuple[str, ...]:
        """The links for a caller that showed no credential: the fixed URLs only."""
        return ice_server_links(self.servers_without_turn())


NodeIce = tuple[str, ...] | IceDirectory
"""A node's own ICE servers: URLs, or a directory that issues each peer a TURN credential."""
