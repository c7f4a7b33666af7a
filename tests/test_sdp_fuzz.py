"""The SDP checks against mutated real offers (Chromium, Firefox-style, aiortc) and trickle
fragments: 10,000 cases each, sans-I/O. A mutant either passes or is refused with BadSdp (400)
or Unprocessable (422); nothing else escapes. What passes is what aiortc accepts: the live
fuzz (tests/test_http_fuzz.py) hands those to real peer connections."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.errors import BadSdp, Unprocessable
from relay.rtc.sdp import check_offer, parse_trickle
from tests.sdp_mutations import offers, trickle_fragments

MANY = settings(
    max_examples=int(os.environ.get("SDP_FUZZ_EXAMPLES", "10000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(300)
@MANY
@given(st.sampled_from(["publish", "view"]).flatmap(lambda r: st.tuples(st.just(r), offers(r))))
def test_check_offer_on_mutated_real_offers(case: tuple[str, str]) -> None:
    role, text = case
    try:
        summary = check_offer(text, role)  # type: ignore[arg-type]
    except (BadSdp, Unprocessable) as exc:
        event(type(exc).__name__)
        return
    event("passed")
    assert summary.kinds and all(summary.codecs.values())
    assert summary.ice_ufrag and summary.ice_pwd


@pytest.mark.timeout(300)
@MANY
@given(trickle_fragments())
def test_parse_trickle_on_mutated_fragments(text: str) -> None:
    with contextlib.suppress(BadSdp):
        frag = parse_trickle(text)
        assert all(len(value.split()) >= 8 for _, value in frag.candidates)
