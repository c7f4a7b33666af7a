"""The SDP checks against mutated real offers (Chromium, Firefox-style, aiortc; 10,000 cases)
and trickle fragments (5,000), sans-I/O. A mutant either passes or is refused with BadSdp (400)
or Unprocessable (422); nothing else escapes. That aiortc accepts what passes is the live
fuzz's part (tests/test_http_fuzz.py hands mutants to real peer connections).
``SDP_FUZZ_EXAMPLES=N`` scales both runs (N for offers, N/2 for fragments)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.errors import BadSdp, Unprocessable
from relay.rtc.sdp import check_offer, parse_trickle
from tests.sdp_mutations import offers, trickle_fragments

EXAMPLES = int(os.environ.get("SDP_FUZZ_EXAMPLES", "10000"))
MANY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(300)
@MANY
@given(st.data())
def test_check_offer_on_mutated_real_offers(data: st.DataObject) -> None:
    role = data.draw(st.sampled_from(["publish", "view"]))
    text = data.draw(offers(role))
    try:
        summary = check_offer(text, role)  # type: ignore[arg-type]
    except (BadSdp, Unprocessable) as exc:
        event(type(exc).__name__)
        return
    event("passed")
    assert summary.kinds and all(summary.codecs.values())
    assert summary.ice_ufrag and summary.ice_pwd


@pytest.mark.timeout(300)
@settings(MANY, max_examples=EXAMPLES // 2)
@given(trickle_fragments())
def test_parse_trickle_on_mutated_fragments(text: str) -> None:
    with contextlib.suppress(BadSdp):
        frag = parse_trickle(text)
        assert all(len(value.split()) >= 8 for _, value in frag.candidates)
