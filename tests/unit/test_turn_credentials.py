"""TURN REST credentials (coturn ``use-auth-secret``), their Link headers (RFC 9725 4.6) and the
settings that make them; the shared secret reaches no client."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.pages import client_config
from gateway.settings import Settings, TurnSettings, ice_directory
from relay.auth.turn import (
    IceDirectory,
    IceServer,
    TurnRest,
    ice_server_links,
    turn_rest_password,
    turn_rest_username,
)

SECRET = "coturn-shared-secret"


def test_password_matches_an_independent_hmac_sha1() -> None:
    # printf '1700000000:alice' | openssl dgst -sha1 -hmac coturn-shared-secret -binary | base64
    assert turn_rest_password(SECRET, "1700000000:alice") == "eaPAufPBtzKyTlFFj8/AobPZBvg="


def test_username_is_expiry_then_subject() -> None:
    turn = TurnRest(("turn:127.0.0.1:3478",), SECRET, ttl=600)
    server = turn.issue("alice", now=1_699_999_400.7)
    assert server.username == "1700000000:alice"
    assert server.credential == "eaPAufPBtzKyTlFFj8/AobPZBvg="
    assert server.urls == ("turn:127.0.0.1:3478",)


def test_subject_cannot_break_out_of_the_quoted_parameter() -> None:
    name = turn_rest_username('a"b\\c, <x>; rel=evil' + "x" * 200, 5)
    assert name.startswith("5:a_b_c__")
    assert len(name) <= len("5:") + 64
    assert '"' not in name and "," not in name and ";" not in name


def test_link_headers_in_rfc_9725_form() -> None:
    servers = (
        IceServer(("stun:stun.example.net",)),
        IceServer(
            ("turn:turn.example.net?transport=udp", "turns:turn.example.net?transport=tcp"),
            "1700000000:alice",
            "pw",
        ),
    )
    assert ice_server_links(servers) == (
        '<stun:stun.example.net>; rel="ice-server"',
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="1700000000:alice"; '
        'credential="pw"; credential-type="password"',
        '<turns:turn.example.net?transport=tcp>; rel="ice-server"; username="1700000000:alice"; '
        'credential="pw"; credential-type="password"',
    )


def test_directory_issues_per_request_and_keeps_turn_from_anonymous_callers() -> None:
    ice = IceDirectory(("stun:s.example",), TurnRest(("turn:t.example",), SECRET, ttl=60))
    early, late = ice.links("bob", 1000.0), ice.links("bob", 2000.0)
    assert early != late and 'username="1060:bob"' in early[1]
    assert ice.public_links() == ('<stun:s.example>; rel="ice-server"',)
    assert IceDirectory().links("bob", 0.0) == ()


def test_settings_need_the_secret_with_turn_urls() -> None:
    with pytest.raises(ValidationError, match=r"turn\.secret"):
        TurnSettings(urls=("turn:t.example",))
    with pytest.raises(ValidationError, match="turn: or turns:"):
        TurnSettings(urls=("stun:t.example",), secret=SECRET)
    assert SECRET not in repr(TurnSettings(urls=("turn:t.example",), secret=SECRET))


def test_env_sets_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGECAST_TURN__URLS", '["turn:t.example:3478"]')
    monkeypatch.setenv("STAGECAST_TURN__SECRET", SECRET)
    monkeypatch.setenv("STAGECAST_TURN__TTL", "300")
    ice = ice_directory(Settings())
    assert ice.turn == TurnRest(("turn:t.example:3478",), SECRET, 300)


def test_page_config_carries_a_credential_not_the_secret() -> None:
    settings = Settings(
        ice_servers=("stun:s.example",),
        turn=TurnSettings(urls=("turn:t.example",), secret=SECRET, ttl=120),
    )
    config = client_config(settings, now=1000.0)
    assert config["iceServers"] == [
        {"urls": ["stun:s.example"]},
        {
            "urls": ["turn:t.example"],
            "username": "1120:page",
            "credential": turn_rest_password(SECRET, "1120:page"),
        },
    ]
    assert SECRET not in repr(config)
