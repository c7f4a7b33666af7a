"""The WebSocket endpoint of a room's channel: ``/rooms/{room}/messages`` (origin and edges).

Credentials ride the ``Sec-WebSocket-Protocol`` header (a browser's WebSocket cannot set other
headers: subprotocols ``stagecast`` and ``stagecast.bearer.<base64url of the token>``, the way
Kubernetes carries bearer tokens, so the credential never lands in a URL and a proxy's access
log), ``Authorization: Bearer`` or the ``access_token`` query parameter (older clients): an
anchor token, an audience token, the operator key, or none (an anonymous viewer, where the room
lets anonymous viewers watch). A refused credential closes the socket with 4401/4403 (4000 + the
HTTP status); a frame over the size limit with 1009; a refused message is answered with an
``error`` frame and the socket stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from relay.auth.access import AccessPolicy, Grant
from relay.auth.tokens import bearer_token
from relay.errors import Forbidden, StagecastError, Unauthorized
from relay.http.common import check_room
from relay.http.ratelimit import client_key
from relay.messages.envelope import (
    CLOSE_FORBIDDEN,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHORIZED,
    SenderRole,
)
from relay.messages.service import Member, RoomChannels

log = logging.getLogger(__name__)


PROTOCOL = "stagecast"
BEARER_PROTOCOL = "stagecast.bearer."


def protocol_token(subprotocols: list[str]) -> str | None:
    """The token a client put in its offered subprotocols (``stagecast.bearer.<base64url>``);
    None without one. Raises ``Unauthorized`` for one that does not decode."""
    for offered in subprotocols:
        if offered.startswith(BEARER_PROTOCOL):
            encoded = offered[len(BEARER_PROTOCOL) :]
            padded = encoded + "=" * (-len(encoded) % 4)
            try:
                token = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                token = ""
            if not token:
                raise Unauthorized("the bearer subprotocol is not base64url of a token")
            return token
    return None


def identify(
    access: AccessPolicy,
    room: str,
    authorization: str | None,
    query_token: str | None,
    operator_key: str,
) -> tuple[Grant, SenderRole]:
    """Who opens the socket: the operator (its key), an anchor, or the audience (a token or,
    where the room allows, anonymous). Unauthorized/Forbidden otherwise."""
    token = bearer_token(authorization, query_token)
    if (
        token is not None
        and operator_key
        and secrets.compare_digest(token.encode(), operator_key.encode())
    ):
        return Grant("operator", "", float("inf")), "operator"
    try:
        grant = access.authorize(room, "anchor", authorization, query_token)
        # a stage guest chats as the audience does; commands are the room's own anchors'
        return grant, "audience" if grant.stage_guest else "anchor"
    except (Unauthorized, Forbidden) as first:
        try:
            return access.authorize(room, "audience", authorization, query_token), "audience"
        except Forbidden:
            raise
        except Unauthorized:
            if token is None:
                raise
            raise first from None


def messages_router(
    channels: RoomChannels,
    access: AccessPolicy,
    *,
    operator_key: str = "",
    before: Callable[[str], Awaitable[object]] | None = None,
) -> APIRouter:
    """``before(room)``: awaited before the credential is checked (an edge reads the room's
    policy from the registry there)."""
    router = APIRouter(tags=["messages"])

    @router.websocket("/rooms/{room}/messages")
    async def room_messages(websocket: WebSocket, room: str) -> None:
        offered = list(websocket.scope.get("subprotocols") or ())
        # a browser that offered subprotocols drops a connection that picks none
        chosen = PROTOCOL if PROTOCOL in offered else None
        try:
            check_room(room)
            if before is not None:
                await before(room)
            from_protocol = protocol_token(offered)
            authorization = websocket.headers.get("authorization")
            if from_protocol is not None:
                authorization = f"Bearer {from_protocol}"
            grant, role = identify(
                access,
                room,
                authorization,
                websocket.query_params.get("access_token"),
                operator_key,
            )
        except StagecastError as exc:
            await websocket.accept(chosen)
            code = CLOSE_UNAUTHORIZED if exc.status == 401 else CLOSE_FORBIDDEN
            await websocket.close(code, exc.detail[:120])
            return
        await websocket.accept(chosen)
        client = websocket.client.host if websocket.client else "unknown"
        member = channels.join(
            room,
            grant.subject,
            role,
            anonymous=grant.anonymous,
            sender_key=client_key(client) if grant.anonymous else grant.subject,
            standing=lambda: access.standing(room, grant),
        )
        sender = asyncio.create_task(_send_loop(websocket, member), name=f"messages-{room}")
        try:
            member.offer(await channels.welcome(member))
            await _receive_loop(websocket, channels, member)
        except WebSocketDisconnect:
            pass
        finally:
            channels.leave(member)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return router


async def _receive_loop(websocket: WebSocket, channels: RoomChannels, member: Member) -> None:
    limit = channels.config.limits.max_bytes
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            if len(data) > limit:
                await websocket.close(CLOSE_TOO_BIG, f"messages are at most {limit} bytes")
                return
            try:
                text = data.decode()
            except UnicodeDecodeError:
                await websocket.close(1007, "messages are UTF-8 JSON")
                return
        if len(text) > limit or len(text.encode()) > limit:
            await websocket.close(CLOSE_TOO_BIG, f"messages are at most {limit} bytes")
            return
        reason = member.ended or member.standing()
        if reason is not None:  # not one more message on a kicked anchor's socket
            member.ended = reason
            await websocket.close(CLOSE_UNAUTHORIZED, reason[:120])
            return
        reply = await channels.receive(member, text)
        if reply is not None:
            member.offer(reply)


async def _send_loop(websocket: WebSocket, member: Member) -> None:
    try:
        while True:
            payload = await member.queue.get()
            if payload is None:  # its credential no longer holds (Member.end)
                await websocket.close(CLOSE_UNAUTHORIZED, (member.ended or "")[:120])
                return
            await websocket.send_text(payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the socket went away under us: the receive loop ends too
        log.debug("message socket of room %s closed: %s", member.room, exc)
