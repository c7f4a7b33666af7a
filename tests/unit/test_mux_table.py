"""relay.rtc.mux_table without sockets: which session each datagram on the shared port is for."""

from __future__ import annotations

import random

from aioice import stun

from relay.rtc.mux_table import MAX_ADDRESSES, MuxTable, is_stun

A, B = ("aaaa", "a" * 22), ("bbbb", "b" * 22)
PEER = ("198.18.0.1", 5000)


def request(
    ufrag: str, key: str, *, nominate: bool = False, method: stun.Method = stun.Method.BINDING
) -> bytes:
    message = stun.Message(method, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:peer"
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(key.encode())
    return bytes(message)


def table() -> MuxTable[str]:
    t: MuxTable[str] = MuxTable()
    t.add(*A, "a")
    t.add(*B, "b")
    return t


def test_stun_by_ufrag_then_data_by_address() -> None:
    t = table()
    assert t.route(b"\x80" + bytes(40), PEER) is None  # nobody has this address yet
    assert t.route(request(*A), PEER) == "a"
    assert t.route(b"\x80" + bytes(40), PEER) == "a"  # SRTP from the checked address
    assert t.route(b"\x16" + bytes(40), PEER) == "a"  # DTLS too
    assert t.addresses("aaaa") == [PEER]


def test_same_address_two_ufrags_stay_apart_and_nomination_moves_the_address() -> None:
    t = table()
    assert t.route(request(*A), PEER) == "a"
    assert t.route(request(*B), PEER) == "b"  # STUN always by ufrag
    assert t.route(b"\x80" + bytes(40), PEER) == "a"  # data stays with the first
    assert t.route(request(*B, nominate=True), PEER) == "b"
    assert t.route(b"\x80" + bytes(40), PEER) == "b"  # USE-CANDIDATE moved it
    assert t.addresses("aaaa") == [] and t.addresses("bbbb") == [PEER]


def test_wrong_integrity_unknown_ufrag_and_non_requests_are_dropped() -> None:
    t = table()
    assert t.route(request("aaaa", "x" * 22), PEER) is None
    assert t.route(request("cccc", A[1]), PEER) is None
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    indication.attributes["USERNAME"] = "aaaa:peer"
    indication.add_message_integrity(A[1].encode())
    assert t.route(bytes(indication), PEER) is None
    assert t.route(request(*A, method=stun.Method.ALLOCATE), PEER) is None
    assert t.route(b"\x80" + bytes(40), PEER) is None  # none of those bound the address
    assert t.dropped == 5


def test_removed_session_forgets_its_addresses() -> None:
    t = table()
    assert t.route(request(*A), PEER) == "a"
    t.remove("aaaa")
    assert t.route(b"\x80" + bytes(40), PEER) is None
    assert t.route(request(*A), PEER) is None
    t.add(*A, "a2")  # the ufrag may be used again
    assert t.route(request(*A), PEER) == "a2"


def test_a_session_is_known_by_a_bounded_number_of_addresses() -> None:
    t = table()
    for port in range(MAX_ADDRESSES + 5):
        assert t.route(request(*A), ("198.18.0.1", 6000 + port)) == "a"
    assert len(t.addresses("aaaa")) == MAX_ADDRESSES
    assert t.route(b"\x80" + bytes(40), ("198.18.0.1", 6000)) is None  # the oldest went


def test_fuzz_never_raises_and_never_routes_a_stranger() -> None:
    rng = random.Random(16)
    t = table()
    cookie = stun.COOKIE.to_bytes(4, "big")
    for i in range(20000):
        body = rng.randbytes(rng.randrange(0, 300))
        if i % 2:
            body = (
                bytes([rng.randrange(4)])
                + rng.randbytes(1)
                + len(body).to_bytes(2, "big")
                + cookie
                + rng.randbytes(12)
                + body
            )
        assert t.route(body, ("198.18.0.9", rng.randrange(1, 65536))) is None
    assert is_stun(request(*A)) and not is_stun(b"\x80" + bytes(40))


def test_unused_ufrags_are_unique_and_valid_ice_chars() -> None:
    t = table()
    seen = {t.unused_ufrag() for _ in range(1000)}
    assert len(seen) == 1000 and not seen & {"aaaa", "bbbb"}
    assert all(len(u) >= 4 and u.isalnum() for u in seen)
