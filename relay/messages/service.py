"""A node's room channels: the sockets of each room here, what their senders may do, and the
bus that carries messages to (and from) the other nodes.

``RoomChannels`` drives the sans-I/O parts (``envelope`` validation, per-sender rate limits,
``LikeAggregator``, ``MuteList``) and owns two tasks: the bus subscription (fan-out to local
sockets) and the like flush (a room's count goes out at most once per interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.http.ratelimit import ClientRateLimiter
from relay.messages.bus import BusError, MessageBus
from relay.messages.envelope import (
    ClientMessage,
    Envelope,
    MessageLimits,
    MessageRejected,
    SenderRole,
    chat_payload,
    command_payload,
    dumps,
    likes_payload,
    mute_payload,
    parse_client_message,
)
from relay.messages.likes import LikeAggregator
from relay.messages.mutes import MuteList
from relay.messages.policy import DEFAULT_CHAT_MODE, Permissions, permissions
from relay.ops.timer_grid import sleep_to_tick

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    limits: MessageLimits = field(default_factory=MessageLimits)
    chat_per_second: float = 1.0
    chat_burst: int = 5
    likes_per_second: float = 10.0  # like frames per sender (each may carry many likes)
    like_burst: int = 20
    commands_per_second: float = 5.0
    command_burst: int = 20
    like_interval: float = 0.25  # a room's like counter goes out at most this often
    queue_size: int = 256  # per socket; a socket this far behind loses its oldest messages
    standing_interval: float = 2.0  # how often open sockets' credentials are checked again


@dataclass(eq=False)
class Member:
    """One socket in a room: who it is, what it may do, what waits to be sent to it."""

    room: str
    subject: str
    role: SenderRole
    anonymous: bool
    sender_key: str  # what rate limits count by (subject; an anonymous viewer's address)
    queue: asyncio.Queue[str | None]  # None: the socket is to be closed (``ended`` says why)
    # why the credential the socket opened with no longer holds (expired, revoked); None: it does
    standing: Callable[[], str | None] = lambda: None
    ended: str | None = None
    dropped: int = 0
    refused_at: float = float("-inf")  # last 429 sent (a flood gets one error a second)

    def offer(self, payload: str | None) -> None:
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
            self.queue.put_nowait(payload)

    def end(self, reason: str) -> None:
        """Close the socket after what is queued: its credential no longer holds."""
        if self.ended is None:
            self.ended = reason
            self.offer(None)


@dataclass(slots=True)
class ChannelStats:
    published: int = 0
    delivered: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    likes_in: int = 0
    like_updates: int = 0
    bus_errors: int = 0


class RoomChannels:
    def __init__(
        self,
        bus: MessageBus,
        config: ChannelConfig | None = None,
        *,
        chat_mode: Callable[[str], str] = lambda room: DEFAULT_CHAT_MODE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.config = config or ChannelConfig()
        self._chat_mode = chat_mode
        self._clock = clock
        cfg = self.config
        self._chat = ClientRateLimiter(cfg.chat_per_second, cfg.chat_burst)
        self._likes_limit = ClientRateLimiter(cfg.likes_per_second, cfg.like_burst)
        self._commands = ClientRateLimiter(cfg.commands_per_second, cfg.command_burst)
        self.likes = LikeAggregator(cfg.like_interval)
        self.mutes = MuteList()
        self.rooms: dict[str, set[Member]] = {}
        self.totals: dict[str, int] = {}  # the last like total seen per room
        self.stats = ChannelStats()
        self._like_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._subscription(), name="messages-bus"),
            asyncio.create_task(self._flush_likes(), name="messages-likes"),
            asyncio.create_task(self._check_standing(), name="messages-standing"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._subscribed.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.bus.close()

    def counters(self) -> dict[str, tuple[str, float]]:
        """For /metrics (the gateway's ``ExtraCounters``)."""
        s = self.stats
        return {
            "stagecast_messages_published": ("Room messages published to the bus", s.published),
            "stagecast_messages_delivered": ("Room messages queued to sockets", s.delivered),
            "stagecast_messages_refused": ("Client messages refused", sum(s.refused.values())),
            "stagecast_messages_likes": ("Likes received from clients", s.likes_in),
            "stagecast_messages_like_updates": ("Like counter updates published", s.like_updates),
            "stagecast_messages_bus_errors": ("Message bus failures", s.bus_errors),
        }

    # -- members ----------------------------------------------------------------------------
    def join(
        self,
        room: str,
        subject: str,
        role: SenderRole,
        *,
        anonymous: bool,
        sender_key: str,
        standing: Callable[[], str | None] = lambda: None,
    ) -> Member:
        """``standing``: why the member's credential no longer holds (None while it does);
        checked at each frame it sends and every ``standing_interval`` (``sweep``)."""
        member = Member(
            room,
            subject,
            role,
            anonymous,
            sender_key,
            asyncio.Queue(self.config.queue_size),
            standing,
        )
        self.rooms.setdefault(room, set()).add(member)
        return member

    def leave(self, member: Member) -> None:
        members = self.rooms.get(member.room)
        if members is not None:
            members.discard(member)
            if not members:
                del self.rooms[member.room]

    def count(self, room: str | None = None) -> int:
        if room is not None:
            return len(self.rooms.get(room, ()))
        return sum(len(m) for m in self.rooms.values())

    def permissions(self, member: Member) -> Permissions:
        return permissions(self._chat_mode(member.room), member.role, member.anonymous)

    async def welcome(self, member: Member) -> str:
        try:
            total = await self.bus.likes(member.room)
        except BusError:
            total = self.totals.get(member.room, 0)
        can = self.permissions(member)
        return dumps(
            {
                "type": "welcome",
                "room": member.room,
                "you": {"subject": member.subject, "role": member.role},
                "can": {"chat": can.chat, "like": can.like, "command": can.command},
                "mode": self._chat_mode(member.room),
                "likes": total,
            }
        )

    # -- from a client ----------------------------------------------------------------------
    def check(self, member: Member, raw: str) -> ClientMessage:
        """The client's frame, validated and allowed for this sender now; ``MessageRejected``
        otherwise (413 over size, 400 malformed, 403 not allowed or muted, 429 too fast)."""
        now = self._clock()
        message = parse_client_message(raw, self.config.limits)
        can = self.permissions(member)
        allowed = {"chat": can.chat, "like": can.like, "command": can.command}[message.type]
        if not allowed:
            raise MessageRejected(403, f"{message.type} is not allowed for you in this room")
        until = self.mutes.muted_until(member.room, member.subject, now)
        if until is not None and message.type != "command":
            raise MessageRejected(403, f"you are muted in this room for {until - now:.0f} s")
        limiter = {"chat": self._chat, "like": self._likes_limit, "command": self._commands}[
            message.type
        ]
        wait = limiter.check(f"{member.room}\n{member.sender_key}", now)
        if wait is not None:
            raise MessageRejected(429, f"too many {message.type} messages", retry_after=wait)
        return message

    async def receive(self, member: Member, raw: str) -> str | None:
        """Handle one frame from ``member``; the error payload to send back, if any (a 429 at
        most once a second: a flood is not answered frame by frame)."""
        try:
            message = self.check(member, raw)
        except MessageRejected as exc:
            self.stats.refused[exc.status] = self.stats.refused.get(exc.status, 0) + 1
            if exc.status == 429:
                now = self._clock()
                if now - member.refused_at < 1.0:
                    return None
                member.refused_at = now
            return exc.payload()
        now = self._clock()
        if message.type == "like":
            self.stats.likes_in += message.count
            self.likes.add(member.room, message.count)
            self._like_wake.set()
            return None
        if message.type == "chat":
            payload = chat_payload(member.subject, member.role, message.text, now)
            return await self._publish(Envelope(member.room, "chat", payload))
        payload = command_payload(member.subject, member.role, message.name, message.data, now)
        return await self._publish(Envelope(member.room, "command", payload))

    async def _publish(self, envelope: Envelope) -> str | None:
        try:
            await self.bus.publish(envelope)
        except BusError as exc:
            self.stats.bus_errors += 1
            return MessageRejected(503, f"message bus unavailable: {exc}").payload()
        self.stats.published += 1
        return None

    # -- from an operator -------------------------------------------------------------------
    async def system(self, room: str, text: str) -> str:
        """Publish a system message; its payload. Raises ``BusError``."""
        payload = chat_payload("system", "operator", text, self._clock(), kind="system")
        await self.bus.publish(Envelope(room, "system", payload))
        return payload

    async def command(self, room: str, name: str, data: object) -> str:
        payload = command_payload("operator", "operator", name, data, self._clock())
        await self.bus.publish(Envelope(room, "command", payload))
        return payload

    async def mute(self, room: str, subject: str, seconds: float) -> float:
        """Mute ``subject`` in ``room`` on every node (0 s: unmute); until when. Raises
        ``BusError``."""
        now = self._clock()
        until = now + seconds if seconds > 0 else 0.0
        self.mutes.set(room, subject, until, now)
        await self.bus.publish(Envelope(room, "mute", mute_payload(subject, until)))
        return until

    def sweep(self) -> int:
        """End the sockets whose credential expired or was revoked (a kicked anchor's, a removed
        guest's); how many."""
        ended = 0
        for members in self.rooms.values():
            for member in members:
                if member.ended is None:
                    reason = member.standing()
                    if reason is not None:
                        member.end(reason)
                        ended += 1
        return ended

    # -- tasks ------------------------------------------------------------------------------
    def deliver(self, envelope: Envelope) -> None:
        """One envelope from the bus to this node's sockets of its room."""
        if envelope.kind == "mute":
            try:
                body = json.loads(envelope.payload)
                self.mutes.set(
                    envelope.room, str(body["subject"]), float(body["until"]), self._clock()
                )
            except (ValueError, KeyError, TypeError):
                log.warning("malformed mute envelope for room %s", envelope.room)
            return
        if envelope.kind == "likes":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                total = int(json.loads(envelope.payload)["total"])
                if total < self.totals.get(envelope.room, 0):
                    return  # an older total overtaken by a newer one from another node
                self.totals[envelope.room] = total
        for member in self.rooms.get(envelope.room, ()):
            member.offer(envelope.payload)
            self.stats.delivered += 1

    async def _subscription(self) -> None:
        while True:
            try:
                async with self.bus.subscribe() as envelopes:
                    self._subscribed.set()
                    async for envelope in envelopes:
                        self.deliver(envelope)
            except BusError as exc:
                self.stats.bus_errors += 1
                log.warning("message bus subscription lost: %s", exc)
            except Exception:
                log.exception("message bus subscription failed")
            await asyncio.sleep(1.0)

    async def _check_standing(self) -> None:
        while True:
            await sleep_to_tick(self.config.standing_interval)  # with the node's other timers
            try:
                self.sweep()
            except Exception:
                log.exception("room channel credential check failed")

    async def _flush_likes(self) -> None:
        while True:
            now = self._clock()
            deadline = self.likes.next_deadline(now)
            if deadline is None:
                await self._like_wake.wait()
                self._like_wake.clear()
                continue
            if deadline > now:
                await asyncio.sleep(deadline - now)
            for room, count in self.likes.due(self._clock()):
                try:
                    total = await self.bus.add_likes(room, count)
                    payload = likes_payload(total, count, self._clock())
                    await self.bus.publish(Envelope(room, "likes", payload))
                    self.stats.like_updates += 1
                except BusError as exc:
                    self.stats.bus_errors += 1
                    log.warning("likes of room %s lost: %s", room, exc)
                except Exception:
                    log.exception("like flush failed")
