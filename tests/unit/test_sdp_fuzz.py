"""The SDP checks against mutated real offers (Chromium, Firefox-style, aiortc) and trickle
fragments, sans-I/O (tests/support/sdp_mutations.py). A mutant either passes or is refused with
BadSdp (400) or Unprocessable (422); nothing else escapes. That aiortc accepts what passes is the
live fuzz's part (tests/live/test_http_fuzz.py hands mutants to real peer connections).

The inner loop runs 1,000 offers and 500 fragments; the slow-marked runs 10,000 and 5,000."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.errors import BadSdp, Unprocessable
from relay.rtc.sdp import check_offer, parse_trickle
from tests.support.sdp_mutations import offers, trickle_fragments


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check_mutant(data: st.DataObject) -> None:
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


def parse_mutant(text: str) -> None:
    try:
        frag = parse_trickle(text)
    except BadSdp:
        return
    assert all(len(value.split()) >= 8 for _, value in frag.candidates)


@fuzz(1_000)
@given(st.data())
def test_check_offer_on_mutated_real_offers(data: st.DataObject) -> None:
    check_mutant(data)


@fuzz(500)
@given(trickle_fragments())
def test_parse_trickle_on_mutated_fragments(text: str) -> None:
    parse_mutant(text)


@pytest.mark.slow
@pytest.mark.timeout(600)
@fuzz(10_000)
@given(st.data())
def test_check_offer_on_ten_thousand_mutated_real_offers(data: st.DataObject) -> None:
    check_mutant(data)


@pytest.mark.slow
@pytest.mark.timeout(600)
@fuzz(5_000)
@given(trickle_fragments())
def test_parse_trickle_on_five_thousand_mutated_fragments(text: str) -> None:
    parse_mutant(text)
