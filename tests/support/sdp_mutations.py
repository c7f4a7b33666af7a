"""Hypothesis strategies that mutate real offers (tests/support/sdp_offers) and trickle
fragments the way a broken or hostile client would: lines dropped, duplicated, swapped or borrowed
from another client's offer; numbers set to the edges of their ranges; values made long, empty,
unicode or control characters. Shared by the parser fuzz (tests/unit/test_sdp_fuzz.py) and the
HTTP fuzz (tests/live/test_http_fuzz.py)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import strategies as st

OFFERS = Path(__file__).parent / "sdp_offers"
CLIENTS = ("chromium", "firefox", "aiortc")


def load(name: str) -> str:
    return (OFFERS / name).read_bytes().decode()


PUBLISH = {c: load(f"{c}_whip.sdp") for c in CLIENTS}
VIEW = {c: load(f"{c}_whep.sdp") for c in CLIENTS}
ALL_LINES = sorted({ln for t in (*PUBLISH.values(), *VIEW.values()) for ln in t.splitlines()})

TRICKLE = (
    "a=ice-ufrag:0/GM\r\n"
    "a=ice-pwd:h0Y4n0R1Rl6YyclcJFp0Z5yD\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
    "a=mid:0\r\n"
    "a=candidate:1175998388 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active generation 0\r\n"
    "a=candidate:948333241 1 udp 2122194687 127.0.0.1 33197 typ host generation 0 network-id 1\r\n"
    "a=candidate:2 1 udp 1686052607 127.0.0.1 61000 typ srflx raddr 0.0.0.0 rport 0\r\n"
    "a=end-of-candidates\r\n"
)

EDGE_NUMBERS = st.sampled_from(
    [
        -1,
        0,
        1,
        15,
        16,
        63,
        64,
        72,
        95,
        96,
        127,
        128,
        255,
        256,
        65535,
        65536,
        2**31,
        2**32 - 1,
        2**32,
        10**20,
        90000,
        48000,
    ]
).map(str)
WEIRD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["", " ", "\t", "é", "\u2028", "\x00", "\x7f", "\x1c", "*", ":", "/", "0x1"]),
    st.integers(1, 6000).map(lambda n: "x" * n),
    st.integers(1, 300).map(lambda n: "9" * n),
)
TOKEN = re.compile(r"[^\s:/;=]+")


@st.composite
def mutate_value(draw: st.DrawFn, line: str) -> str:
    """One line with one of its tokens (or all of its value) replaced."""
    tokens = [m.span() for m in TOKEN.finditer(line)]
    choice = draw(st.integers(0, 5))
    if choice == 0 or not tokens:  # the whole value after the type
        return line[:2] + draw(WEIRD_TEXT)
    start, end = draw(st.sampled_from(tokens))
    if choice == 1:
        return line[:start] + draw(EDGE_NUMBERS) + line[end:]
    if choice == 2:
        return line[:start] + draw(WEIRD_TEXT) + line[end:]
    if choice == 3:  # a token of another line
        other = draw(st.sampled_from(ALL_LINES))
        found: list[str] = TOKEN.findall(other) or [""]
        return line[:start] + draw(st.sampled_from(found)) + line[end:]
    if choice == 4:  # truncated
        return line[: draw(st.integers(0, len(line)))]
    cut = draw(st.integers(0, len(line)))  # a character inserted
    return line[:cut] + draw(WEIRD_TEXT.filter(bool)) + line[cut:]


@st.composite
def mutated(draw: st.DrawFn, text: str, max_mutations: int = 4) -> str:
    """``text`` (an SDP document or fragment) after 1..max_mutations line-level mutations."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, max_mutations))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "value", "value", "borrow", "blank"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "value":
            lines[i] = draw(mutate_value(lines[i]))
        elif op == "borrow":
            lines.insert(i, draw(st.sampled_from(ALL_LINES)))
        else:
            lines.insert(i, "")
    end = draw(st.sampled_from(["\r\n", "\n"]))
    return end.join(lines) + end


@st.composite
def offers(draw: st.DrawFn, role: str) -> str:
    """Mutations of the real offers for ``role`` ("publish" or "view")."""
    source = PUBLISH if role == "publish" else VIEW
    return draw(mutated(source[draw(st.sampled_from(CLIENTS))]))


def trickle_fragments() -> st.SearchStrategy[str]:
    return mutated(TRICKLE)
