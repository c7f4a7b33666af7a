"""An edge's presence request carries a token that never outlives the edge: it is minted anew
before half its life is gone (one minted at start expired after an hour, and every presence
request after that got 401, which silently ended the fast failover)."""

from __future__ import annotations

import asyncio
import time

from relay.auth.tokens import TokenAuthority
from relay.cluster.presence import _Holder

SECRET = "presence-test-secret-" + "x" * 24


async def _never(_: str) -> None:
    await asyncio.sleep(0)


def test_presence_token_is_minted_anew_before_it_expires() -> None:
    tokens = TokenAuthority(SECRET)
    holder = _Holder("http://upstream:8080", "edge-1", tokens, 1.0, _never)
    first = holder.fresh_token(now=0.0)
    assert holder.fresh_token(now=holder.token_ttl / 2 - 1) == first
    later = holder.fresh_token(now=holder.token_ttl / 2)
    assert later != first
    assert holder.fresh_token(now=holder.token_ttl * 10) not in (first, later)
    claims = tokens.claims(later)
    assert claims.subject.endswith("edge-1")
    assert abs(claims.expires_at - time.time() - holder.token_ttl) < 5
