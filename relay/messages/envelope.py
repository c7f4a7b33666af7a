"""Room message wire format and validation (sans-I/O): what a client may send, what every
subscriber receives, and the envelope the cluster bus carries.

Client -> node (one JSON object per WebSocket text frame):
  ``{"type": "chat", "text": "hi"}``, ``{"type": "like", "count": 3}``,
  ``{"type": "command", "name": "gift", "data": {...}}``.
Node -> client: ``chat``, ``command``, ``system``, ``likes`` (an aggregated counter),
``welcome`` (once, on connect) and ``error`` (a refused message; the socket stays open).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

RESERVED_COMMAND_PREFIX = "stage."
"""Command names the node's own notices use (``stage.participants``): a client may not send
them, so pages can trust what arrives under them."""
Kind = Literal["chat", "command", "system", "likes", "mute"]
KINDS: tuple[Kind, ...] = ("chat", "command", "system", "likes", "mute")
SenderRole = Literal["anchor", "audience", "operator"]

COMMAND_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CLOSE_TOO_BIG = 1009  # RFC 6455: message too big to process
CLOSE_UNAUTHORIZED = 4401  # 4000 + the HTTP status it stands for
CLOSE_FORBIDDEN = 4403
CLOSE_GOING_AWAY = 1001


class MessageRejected(Exception):
    """A client message that is refused; ``status`` mirrors HTTP (400, 403, 413, 429)."""

    def __init__(self, status: int, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after

    def payload(self) -> str:
        body: dict[str, Any] = {"type": "error", "status": self.status, "detail": self.detail}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return dumps(body)


@dataclass(frozen=True, slots=True)
class MessageLimits:
    max_bytes: int = 2048  # one client frame, UTF-8 bytes; more: close 1009
    max_text: int = 500  # characters of a chat line
    max_like_count: int = 50  # likes one frame may carry
    max_data_bytes: int = 1024  # a command's data, as JSON


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A valid message from a client, before its sender is checked."""

    type: Literal["chat", "like", "command"]
    text: str = ""
    count: int = 0
    name: str = ""
    data: Any = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the bus carries: the room, the kind, and the payload exactly as subscribers get it
    (serialized once at the sender's node, sent as is to every socket)."""

    room: str
    kind: Kind
    payload: str

    def to_json(self) -> str:
        return dumps({"room": self.room, "kind": self.kind, "payload": self.payload})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Envelope:
        data = json.loads(raw)
        if data.get("kind") not in KINDS:
            raise ValueError(f"unknown kind {data.get('kind')!r}")
        return cls(str(data["room"]), data["kind"], str(data["payload"]))


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def message_id() -> str:
    return secrets.token_urlsafe(9)


def parse_client_message(raw: str, limits: MessageLimits) -> ClientMessage:
    """The client's frame as a ``ClientMessage``; ``MessageRejected`` (413 over size, 400 bad)."""
    if len(raw) > limits.max_bytes or len(raw.encode()) > limits.max_bytes:
        raise MessageRejected(413, f"a message may have at most {limits.max_bytes} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MessageRejected(400, "a message is one JSON object") from exc
    if not isinstance(data, dict):
        raise MessageRejected(400, "a message is one JSON object")
    kind = data.get("type")
    if kind == "chat":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise MessageRejected(400, "chat needs a non-empty text")
        text = text.strip()
        if len(text) > limits.max_text:
            raise MessageRejected(413, f"chat text may have at most {limits.max_text} characters")
        if any(ord(c) < 32 and c not in "\t" for c in text):
            raise MessageRejected(400, "chat text may not contain control characters")
        return ClientMessage("chat", text=text)
    if kind == "like":
        count = data.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise MessageRejected(400, "like count is a positive integer")
        return ClientMessage("like", count=min(count, limits.max_like_count))
    if kind == "command":
        name = data.get("name")
        if not isinstance(name, str) or not COMMAND_NAME.match(name):
            raise MessageRejected(400, "command name: 1-64 of A-Z a-z 0-9 _ . : -")
        if name.startswith(RESERVED_COMMAND_PREFIX):
            raise MessageRejected(
                403, f"commands named {RESERVED_COMMAND_PREFIX}* come from the node itself"
            )
        payload = data.get("data")
        if len(dumps(payload).encode()) > limits.max_data_bytes:
            raise MessageRejected(413, f"command data may have at most {limits.max_data_bytes} B")
        return ClientMessage("command", name=name, data=payload)
    raise MessageRejected(400, "type must be chat, like or command")


def chat_payload(
    subject: str, role: SenderRole, text: str, at: float, *, kind: str = "chat"
) -> str:
    return dumps(
        {
            "type": kind,
            "id": message_id(),
            "from": {"subject": subject, "role": role},
            "text": text,
            "at": round(at, 3),
        }
    )


def command_payload(subject: str, role: SenderRole, name: str, data: Any, at: float) -> str:
    return dumps(
        {
            "type": "command",
            "id": message_id(),
            "from": {"subject": subject, "role": role},
            "name": name,
            "data": data,
            "at": round(at, 3),
        }
    )


def likes_payload(total: int, delta: int, at: float) -> str:
    return dumps({"type": "likes", "total": total, "delta": delta, "at": round(at, 3)})


def mute_payload(subject: str, until: float) -> str:
    """A mute (``until`` > now) or unmute (``until`` 0) of ``subject``: node state, not shown."""
    return dumps({"type": "mute", "subject": subject, "until": until})
