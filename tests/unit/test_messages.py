"""Room messages, sans-I/O: validation, permissions by chat mode, per-sender rate limits, like
aggregation and mutes, and ``RoomChannels`` driven with a clock over the in-memory bus."""

from __future__ import annotations

import asyncio
import json

import pytest

from relay.messages.bus import MemoryBus
from relay.messages.envelope import Envelope, MessageLimits, MessageRejected, parse_client_message
from relay.messages.likes import LikeAggregator
from relay.messages.mutes import MuteList
from relay.messages.policy import permissions
from relay.messages.service import ChannelConfig, RoomChannels

LIMITS = MessageLimits(max_bytes=256, max_text=20, max_like_count=50, max_data_bytes=64)


def rejected(raw: str) -> int:
    with pytest.raises(MessageRejected) as info:
        parse_client_message(raw, LIMITS)
    return info.value.status


def test_valid_messages_parse() -> None:
    chat = parse_client_message('{"type":"chat","text":"  hello  "}', LIMITS)
    assert (chat.type, chat.text) == ("chat", "hello")
    assert parse_client_message('{"type":"like"}', LIMITS).count == 1
    assert parse_client_message('{"type":"like","count":500}', LIMITS).count == 50  # capped
    cmd = parse_client_message('{"type":"command","name":"gift.rose","data":{"n":2}}', LIMITS)
    assert (cmd.name, cmd.data) == ("gift.rose", {"n": 2})


def test_invalid_and_oversized_messages_are_refused_with_their_status() -> None:
    assert rejected("x" * 257) == 413  # the frame
    assert rejected('{"type":"chat","text":"' + "é" * 130 + '"}') == 413  # bytes, not chars
    assert rejected('{"type":"chat","text":"' + "a" * 21 + '"}') == 413  # the text
    assert rejected('{"type":"command","name":"x","data":"' + "a" * 80 + '"}') == 413
    assert rejected("not json") == 400
    assert rejected("[1]") == 400
    assert rejected('{"type":"chat","text":"   "}') == 400
    assert rejected('{"type":"chat","text":"a\\u0007b"}') == 400
    assert rejected('{"type":"like","count":0}') == 400
    assert rejected('{"type":"like","count":true}') == 400
    assert rejected('{"type":"command","name":"no spaces"}') == 400
    assert rejected('{"type":"system","text":"fake"}') == 400  # only operators send these


def test_permissions_by_chat_mode() -> None:
    def can(mode: str, role: str, anonymous: bool = False) -> tuple[bool, bool, bool]:
        p = permissions(mode, role, anonymous)  # type: ignore[arg-type]
        return p.chat, p.like, p.command

    assert can("audience", "audience") == (True, True, False)
    assert can("audience", "audience", anonymous=True) == (False, False, False)
    assert can("open", "audience", anonymous=True) == (True, True, False)
    assert can("anchors", "audience") == (False, True, False)
    assert can("off", "audience") == (False, False, False)
    assert can("off", "anchor") == (False, False, True)
    assert can("audience", "anchor") == (True, True, True)
    assert can("audience", "operator") == (True, True, True)


def test_like_aggregator_releases_a_room_at_most_once_per_interval() -> None:
    agg = LikeAggregator(interval=0.25)
    assert agg.due(0.0) == [] and agg.next_deadline(0.0) is None
    for _ in range(1000):
        agg.add("r", 1)
    agg.add("s", 3)
    assert agg.due(0.0) == [("r", 1000), ("s", 3)]  # the first count goes out at once
    agg.add("r", 5)
    assert agg.due(0.1) == []  # within the interval: held
    assert agg.next_deadline(0.1) == pytest.approx(0.25)
    agg.add("r", 5)
    assert agg.due(0.25) == [("r", 10)]  # then one update with everything since
    assert agg.pending == 0


def test_mute_list_expires() -> None:
    mutes = MuteList()
    mutes.set("r", "bob", until=10.0, now=0.0)
    assert mutes.muted_until("r", "bob", 5.0) == 10.0
    assert mutes.muted_until("other", "bob", 5.0) is None
    assert mutes.muted_until("r", "bob", 10.0) is None
    mutes.set("r", "bob", until=20.0, now=11.0)
    assert mutes.listed("r", 11.0) == {"bob": 20.0}
    mutes.set("r", "bob", until=0.0, now=12.0)  # unmute
    assert mutes.listed("r", 12.0) == {}


def test_envelope_round_trip() -> None:
    env = Envelope("r", "chat", '{"type":"chat","text":"hé"}')
    assert Envelope.from_json(env.to_json()) == env
    with pytest.raises(ValueError):
        Envelope.from_json('{"room":"r","kind":"nope","payload":""}')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.timeout(10)
async def test_channels_rate_limit_each_sender_and_nothing_else() -> None:
    clock = Clock()
    config = ChannelConfig(chat_per_second=1, chat_burst=2, likes_per_second=5, like_burst=5)
    channels = RoomChannels(MemoryBus(), config, clock=clock)
    await channels.start()
    try:
        flood = channels.join("r", "flooder", "audience", anonymous=False, sender_key="flooder")
        calm = channels.join("r", "calm", "audience", anonymous=False, sender_key="calm")
        replies = [await channels.receive(flood, '{"type":"like"}') for _ in range(100)]
        errors = [json.loads(r) for r in replies if r is not None]
        # 5 likes pass; of the 95 refused, one 429 answer (a flood is not answered frame by frame)
        assert [e["status"] for e in errors] == [429]
        assert errors[0]["retry_after"] >= 1
        assert channels.stats.refused[429] == 95
        assert channels.stats.likes_in == 5
        # the other sender is not slowed: its likes and chat go through at once
        assert await channels.receive(calm, '{"type":"like","count":3}') is None
        assert await channels.receive(calm, '{"type":"chat","text":"hi"}') is None
        assert await channels.receive(calm, '{"type":"chat","text":"again"}') is None
        third = await channels.receive(calm, '{"type":"chat","text":"too fast"}')
        assert third is not None and json.loads(third)["status"] == 429
        clock.now += 1.0  # the bucket refills
        assert await channels.receive(calm, '{"type":"chat","text":"later"}') is None
        # commands are for anchors
        cmd = await channels.receive(calm, '{"type":"command","name":"x"}')
        assert cmd is not None and json.loads(cmd)["status"] == 403
        # everything published reaches both sockets, in order; likes as one counter update
        clock.now += 1.0
        await asyncio.sleep(0.05)
        texts: list[str] = []
        likes: list[dict[str, int]] = []
        while not calm.queue.empty():
            msg = json.loads(calm.queue.get_nowait())
            if msg["type"] == "chat":
                texts.append(msg["text"])
            elif msg["type"] == "likes":
                likes.append(msg)
        assert texts == ["hi", "again", "later"]
        assert sum(m["delta"] for m in likes) == 8 and likes[-1]["total"] == 8
        assert len(likes) <= 2  # 8 likes from two senders: one or two updates, not eight
    finally:
        await channels.stop()


@pytest.mark.timeout(10)
async def test_mute_refuses_chat_and_likes_until_it_ends() -> None:
    clock = Clock()
    channels = RoomChannels(MemoryBus(), clock=clock)
    await channels.start()
    try:
        bob = channels.join("r", "bob", "audience", anonymous=False, sender_key="bob")
        until = await channels.mute("r", "bob", 60)
        assert until == clock.now + 60
        reply = await channels.receive(bob, '{"type":"chat","text":"hi"}')
        assert reply is not None and json.loads(reply)["status"] == 403
        reply = await channels.receive(bob, '{"type":"like"}')
        assert reply is not None and json.loads(reply)["status"] == 403
        clock.now += 61
        assert await channels.receive(bob, '{"type":"chat","text":"back"}') is None
    finally:
        await channels.stop()


@pytest.mark.timeout(10)
async def test_a_slow_socket_loses_its_oldest_messages_and_blocks_no_one() -> None:
    channels = RoomChannels(MemoryBus(), ChannelConfig(queue_size=8))
    slow = channels.join("r", "slow", "audience", anonymous=False, sender_key="slow")
    for i in range(20):
        channels.deliver(Envelope("r", "system", f'{{"n":{i}}}'))
    assert slow.queue.qsize() == 8 and slow.dropped == 12
    assert json.loads(slow.queue.get_nowait()) == {"n": 12}


def test_clients_cannot_send_the_nodes_own_commands() -> None:
    """``stage.*`` commands are the node's notices (the call page's participant list): a client
    sending one (any call participant or stage guest has the anchor role) gets 403."""
    import pytest

    from relay.messages.envelope import MessageLimits, MessageRejected, parse_client_message

    raw = '{"type": "command", "name": "stage.participants", "data": {"participants": []}}'
    with pytest.raises(MessageRejected) as refused:
        parse_client_message(raw, MessageLimits())
    assert refused.value.status == 403
    ok = parse_client_message('{"type": "command", "name": "gift.rose"}', MessageLimits())
    assert ok.name == "gift.rose"


@pytest.mark.timeout(10)
async def test_the_sweep_ends_members_whose_credential_no_longer_holds() -> None:
    """A member whose ``standing`` gives a reason gets the end marker after what is queued,
    once; the others are left alone."""
    channels = RoomChannels(MemoryBus())
    verdict: list[str | None] = [None]
    kicked = channels.join(
        "r", "host", "anchor", anonymous=False, sender_key="host", standing=lambda: verdict[0]
    )
    fan = channels.join("r", "fan", "audience", anonymous=False, sender_key="fan")
    channels.deliver(Envelope("r", "system", '{"n":1}'))
    assert channels.sweep() == 0
    verdict[0] = "token has been revoked"
    assert channels.sweep() == 1 and channels.sweep() == 0  # once
    assert kicked.ended == "token has been revoked"
    assert [kicked.queue.get_nowait(), kicked.queue.get_nowait()] == ['{"n":1}', None]
    assert fan.ended is None and fan.queue.qsize() == 1
