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
