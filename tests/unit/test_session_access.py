"""Who may change or end a session (sans-I/O): its own token's subject, or the operator key;
a session opened without a token, by its URL alone."""

from __future__ import annotations

import time

import pytest

from relay.auth.access import AccessPolicy, Grant
from relay.auth.tokens import TokenAuthority
from relay.errors import Forbidden, Unauthorized

SECRET = "unit-secret-" + "y" * 40


def test_policy_lets_only_the_owner_or_the_operator_act_on_a_session() -> None:
    tokens = TokenAuthority(SECRET)
    policy = AccessPolicy(tokens, anonymous_audience=True, operator_key="operator-key-0123456789")
    alice = Grant("alice", "j1", time.time() + 60)
    alice_tok = tokens.mint("r", "anchor", "alice", 60)
    bob_tok = tokens.mint("r", "anchor", "bob", 60)
    roles = ("anchor",)
    policy.authorize_session("r", roles, alice, f"Bearer {alice_tok}")
    policy.authorize_session("r", roles, alice, None, alice_tok)  # ?access_token=
    policy.authorize_session("r", roles, alice, "Bearer operator-key-0123456789")
    with pytest.raises(Forbidden):
        policy.authorize_session("r", roles, alice, f"Bearer {bob_tok}")
    with pytest.raises(Unauthorized):
        policy.authorize_session("r", roles, alice, None)
    with pytest.raises(Unauthorized):
        policy.authorize_session("r", roles, alice, "Bearer operator-key-wrong-wrong")
    with pytest.raises(Forbidden):  # right subject, other room
        policy.authorize_session("r", roles, alice, None, tokens.mint("s", "anchor", "alice", 60))
    # a session opened without a token is reached through its unguessable URL alone
    anon = Grant("anonymous-1", "", float("inf"), anonymous=True)
    policy.authorize_session("r", ("audience",), anon, None)
    # no operator key configured: no bearer value counts as one
    plain = AccessPolicy(tokens)
    with pytest.raises(Unauthorized):
        plain.authorize_session("r", roles, alice, "Bearer ")


def test_a_grant_stands_until_it_expires_or_is_revoked_here_or_at_the_origin() -> None:
    """``standing``: for what outlives its request (a room-channel socket)."""
    now = [1000.0]
    elsewhere: set[tuple[str, str]] = set()
    policy = AccessPolicy(
        TokenAuthority(SECRET),
        clock=lambda: now[0],
        revoked_elsewhere=lambda room, tid: (room, tid) in elsewhere,
    )
    host = Grant("host", "j1", 1060.0)
    guest = Grant("guest", "j2", 1060.0)
    anon = Grant("anonymous-1", "", float("inf"), anonymous=True)
    assert policy.standing("r", host) is None and policy.standing("r", anon) is None
    policy.revoke("j1", 1060.0, "r")
    assert policy.standing("r", host) == "token has been revoked"
    elsewhere.add(("r", "j2"))  # an edge learns the origin's revocation
    assert policy.standing("r", guest) == "token has been revoked"
    assert policy.standing("other", guest) is None
    now[0] = 1060.0
    assert policy.standing("r", Grant("late", "j3", 1060.0)) == "token expired"
    assert policy.standing("r", anon) is None
