"""Mutated real offers and trickle fragments (tests/support/sdp_mutations.py) sent to the
WHIP, WHEP and PATCH handlers of a real origin and a real edge (tests/support/live_bed.py): never
a 5xx, every refusal a problem+json, no aiortc exception that check_offer let through
(answer_offer logs those), and afterwards no session and no open peer connection left behind.

The default run is a few hundred cases; the slow-marked one runs 10,000.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live.test_protocol import make_offer
from tests.support.live_bed import ROOM, SDP, TRICKLE, Bed, live_bed, on_loop, open_session
from tests.support.sdp_mutations import offers, trickle_fragments
from tests.support.server import live_peer_connections

# The servers' threads use the random module (aiortc's SSRCs, aioice) while hypothesis draws;
# hypothesis would take that for a strategy using it.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@dataclass(frozen=True)
class Target:
    name: str
    base: str
    path: str  # POST here
    role: str  # "publish" (WHIP) or "view" (WHEP)
    headers: dict[str, str]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with live_bed() as bed:
        yield bed


# WHEP's query: what a viewer asks for (no real rendition or anchor: a pull of one would stay
# up on the edge), and a token in the URL.
QUERIES: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.just({}),
    st.tuples(
        st.sampled_from(["rendition", "anchor", "mixminus", "access_token"]),
        st.one_of(st.sampled_from(["", "nope", "\x00", "\u00e9", "a" * 65]), st.text(max_size=80)),
    ).map(lambda kv: {kv[0]: kv[1]}),
)


def trickling_offer(bed: Bed, direction: str) -> str:
    """A real aiortc offer as a trickling client sends it: no candidates yet, no end."""
    text = on_loop(bed.origin, make_offer(direction))
    lines = text.splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.startswith(("a=candidate", "a=end-of-cand")))


def fuzz(bed: Bed, examples: int) -> Counter[tuple[str, str, int]]:
    """``examples`` hypothesis cases against the bed; the status codes seen, by target."""
    origin, edge = bed.origin.base_url, bed.edge.base_url
    anchor = {"Authorization": f"Bearer {bed.origin.anchor_token('fuzz')}"}
    patch_anchor = {"Authorization": f"Bearer {bed.origin.anchor_token('fuzzpatch')}"}
    targets = [
        Target("origin WHIP", origin, "/whip/fuzz", "publish", anchor),
        Target("origin WHEP", origin, f"/whep/{ROOM}", "view", {}),
        Target("edge WHEP", edge, f"/whep/{ROOM}", "view", {}),
    ]
    clients = {base: httpx.Client(base_url=base, timeout=30) for base in (origin, edge)}
    # sessions to PATCH, opened with offers that trickle (no candidates, no end-of-candidates)
    publish, view = trickling_offer(bed, "sendonly"), trickling_offer(bed, "recvonly")
    patchable: dict[str, tuple[str, str, dict[str, str]]] = {}
    for name, client, path, offer, auth in (
        ("origin WHIP", clients[origin], "/whip/fuzzpatch", publish, patch_anchor),
        ("origin WHEP", clients[origin], f"/whep/{ROOM}", view, {}),
        ("edge WHEP", clients[edge], f"/whep/{ROOM}", view, {}),
    ):
        where, etag = open_session(client, path, offer, auth)
        patchable[name] = (where, etag, auth)
    seen: Counter[tuple[str, str, int]] = Counter()

    def check(resp: httpx.Response, what: str) -> None:
        assert resp.status_code < 500, (what, resp.status_code, resp.text[:300])
        if resp.status_code >= 400:
            assert resp.headers["content-type"].startswith("application/problem+json"), what
            assert resp.json()["status"] == resp.status_code, what

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[Target, str, str, str | None, dict[str, str]]:
        """(target, method, body, If-Match, query); a PATCH goes to the target's session."""
        target = draw(st.sampled_from(targets))
        query = draw(QUERIES if target.role == "view" else st.just({}))
        if draw(st.booleans()):
            return target, "POST", draw(offers(target.role)), None, query
        etag = patchable[target.name][1]
        if_match = draw(st.sampled_from([etag, etag, etag, "*", '"not-it"', None]))
        return target, "PATCH", draw(trickle_fragments()), if_match, {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def one(request: tuple[Target, str, str, str | None, dict[str, str]]) -> None:
        target, method, body, if_match, query = request
        client = clients[target.base]
        if method == "POST":
            headers = {**SDP, **target.headers}
            resp = client.post(target.path, content=body.encode(), headers=headers, params=query)
            check(resp, f"POST {target.name}")
            if resp.status_code == 201:  # 404: its ICE failed at once (no usable candidate)
                gone = client.delete(resp.headers["location"], headers=target.headers)
                assert gone.status_code in (200, 404), gone.text
        else:
            where, _, auth = patchable[target.name]
            headers = {**TRICKLE, **auth}
            if if_match is not None:
                headers["If-Match"] = if_match
            resp = client.patch(where, content=body.encode(), headers=headers)
            check(resp, f"PATCH {target.name}")
            assert resp.status_code != 404, "the session to patch has gone"
        seen[(target.name, method, resp.status_code)] += 1

    try:
        one()
    finally:
        for name, (where, _, auth) in patchable.items():
            base = origin if name.startswith("origin") else edge
            clients[base].delete(where, headers=auth)
        for client in clients.values():
            client.close()
    return seen


def run(bed: Bed, examples: int) -> Counter[tuple[str, str, int]]:
    warm = httpx.post(
        f"{bed.edge.base_url}/whep/{ROOM}",
        content=on_loop(bed.origin, make_offer("recvonly")),
        headers=SDP,
        timeout=30,
    )
    assert warm.status_code == 201, warm.text  # the edge's pull is up: its link is in the baseline
    httpx.delete(bed.edge.base_url + warm.headers["location"], timeout=30)
    bed.settled(bed.sessions(), live_peer_connections())
    baseline, pcs = bed.sessions(), live_peer_connections()
    start = time.monotonic()
    seen = fuzz(bed, examples)
    elapsed = time.monotonic() - start
    bed.settled(baseline, pcs)
    gaps = [m for m in bed.log.messages() if "check_offer passed" in m or "unhandled" in m]
    assert not gaps, gaps
    total = sum(seen.values())
    print(f"\n{total} requests in {elapsed:.1f} s; statuses by target: {sorted(seen.items())}")
    # every target was reached, and the mutants were not all refused before the handlers
    assert {name for name, _, _ in seen} == {"origin WHIP", "origin WHEP", "edge WHEP"}
    return seen


@pytest.mark.timeout(600)
def test_http_handlers_on_origin_and_edge_survive_mutated_offers(bed: Bed) -> None:
    seen = run(bed, int(os.environ.get("HTTP_FUZZ_EXAMPLES", "300")))
    assert any(code == 201 for _, method, code in seen if method == "POST")


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_http_handlers_survive_ten_thousand_mutated_requests(bed: Bed) -> None:
    seen = run(bed, 10_000)
    assert sum(seen.values()) >= 10_000
