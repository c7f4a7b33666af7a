"""The pieces of relay/http/slow_clients.py alone; tests/live/test_slow_clients.py drives real node
and edge processes with raw sockets."""

from __future__ import annotations

from relay.http.ratelimit import client_key
from relay.http.slow_clients import AddressGate, SlowClientLimits, guarded_http_protocol


def test_address_gate_counts_per_address() -> None:
    gate = AddressGate(2)
    assert gate.admit("a") and gate.admit("a") and not gate.admit("a")
    assert gate.admit("b")
    gate.add("a")  # a kept-alive connection beginning a request is never refused
    assert gate.waiting == {"a": 3, "b": 1} and gate.refused == 1
    for _ in range(3):
        gate.release("a")
    gate.release("b")
    assert gate.waiting == {} and gate.admit("a")


def test_uvicorn_internals_the_guard_relies_on() -> None:
    """Fails loudly if a uvicorn upgrade moves what relay/http/slow_clients.py hooks."""
    from uvicorn.protocols.http import httptools_impl

    proto = httptools_impl.HttpToolsProtocol
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "pause_writing",
        "resume_writing",
    ):
        assert callable(getattr(proto, name, None)), name
    cycle = httptools_impl.RequestResponseCycle
    for name in ("response_started", "response_complete", "disconnected", "message_event"):
        assert name in cycle.__init__.__code__.co_names, name
    cls = guarded_http_protocol(SlowClientLimits())
    assert issubclass(cls, proto) and isinstance(cls.address_gate, AddressGate)


def test_client_key_groups_an_ipv6_slash_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    same = client_key("2001:db8:1:2::1")
    assert same == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("unknown") == "unknown"
