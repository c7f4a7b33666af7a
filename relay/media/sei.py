"""Timed metadata in the video itself: H.264 SEI "user data unregistered" messages (payload type
5, ITU-T H.264 D.1.6) carried in the frame they belong to, so a player that reads them (insertable
streams, WebCodecs, ffmpeg's side data) gets them frame-accurately: what TRTC's SEI messages do
for live commerce (a product card in sync with the host's words) and quizzes.

An SEI NAL unit goes in front of the frame's first slice (``with_sei``): as one more RTP payload
(single NAL unit packet, RFC 6184 5.6) and in the Annex-B bitstream the recorder and bridges use.
Each message starts with the 16-byte UUID that says who wrote it (``STAGECAST_UUID``).
"""

from __future__ import annotations

import dataclasses
import uuid

from relay.media.frames import EncodedFrame

STAGECAST_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/stagecast/sei").bytes
MAX_PAYLOAD = 1000  # bytes of user data
MAX_NAL = 1100  # the NAL unit after emulation prevention: one RTP packet within the MTU
SEI, FU_A, STAP_A = 6, 28, 24
VCL = (1, 5)
START = b"\x00\x00\x00\x01"


def _escape(rbsp: bytes) -> bytes:
    """Emulation prevention: no 00 00 0x (x <= 3) may appear inside a NAL unit."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _unescape(ebsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in ebsp:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _ff_coded(value: int) -> bytes:
    return b"\xff" * (value // 255) + bytes([value % 255])


def sei_nal(payload: bytes, owner: bytes = STAGECAST_UUID) -> bytes:
    """One SEI NAL unit (header byte included) with one user-data-unregistered message."""
    if len(owner) != 16:
        raise ValueError("the UUID is 16 bytes")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"SEI payload over {MAX_PAYLOAD} bytes")
    body = owner + payload
    rbsp = _ff_coded(5) + _ff_coded(len(body)) + body + b"\x80"
    nal = bytes([SEI]) + _escape(rbsp)
    if len(nal) > MAX_NAL:  # zeros escape to 3 bytes per 2: 1000 NULs would not fit a packet
        raise ValueError(f"SEI payload takes {len(nal)} bytes escaped, over {MAX_NAL}")
    return nal


def parse_sei(nal: bytes) -> list[tuple[bytes, bytes]]:
    """The (uuid, payload) of each user-data-unregistered message in an SEI NAL unit; other
    messages are skipped. ValueError when it is not an SEI NAL unit or is cut short."""
    if not nal or nal[0] & 0x1F != SEI:
        raise ValueError("not an SEI NAL unit")
    rbsp = _unescape(nal[1:])
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(rbsp) and rbsp[pos:] != b"\x80":
        kind = size = 0
        while rbsp[pos] == 0xFF:
            kind += 255
            pos += 1
        kind += rbsp[pos]
        pos += 1
        while rbsp[pos] == 0xFF:
            size += 255
            pos += 1
        size += rbsp[pos]
        pos += 1
        body = rbsp[pos : pos + size]
        if len(body) < size:
            raise ValueError("SEI message cut short")
        if kind == 5 and size >= 16:
            out.append((body[:16], body[16:]))
        pos += size
    return out


def _payload_type(payload: bytes) -> int:
    """The NAL type an RTP payload starts (an FU-A: its fragment's; a STAP-A: a VCL inside)."""
    kind = payload[0] & 0x1F
    if kind == FU_A and len(payload) > 1:
        return payload[1] & 0x1F
    if kind == STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if payload[pos + 2] & 0x1F in VCL:
                return payload[pos + 2] & 0x1F
            pos += 2 + size
    return kind


def _annexb_first_vcl(data: bytes) -> int:
    """Offset of the start code in front of the first slice NAL unit (len(data) if none)."""
    pos = 0
    while True:
        at = data.find(b"\x00\x00\x01", pos)
        if at < 0 or at + 3 >= len(data):
            return len(data)
        if data[at + 3] & 0x1F in VCL:
            return at - 1 if at > 0 and data[at - 1] == 0 else at
        pos = at + 3


def with_sei(frame: EncodedFrame, nals: list[bytes]) -> EncodedFrame:
    """The frame with SEI NAL units in front of its first slice; an H.264 frame only."""
    if frame.kind != "video" or frame.codec.upper() != "H264" or not nals:
        return frame
    payloads = list(frame.payloads)
    at = next((i for i, p in enumerate(payloads) if p and _payload_type(p) in VCL), 0)
    payloads[at:at] = nals
    cut = _annexb_first_vcl(frame.data)
    data = frame.data[:cut] + b"".join(START + n for n in nals) + frame.data[cut:]
    return dataclasses.replace(frame, payloads=tuple(payloads), data=data)


def _claims(nal: bytes, owner: bytes) -> bool:
    """Does this SEI NAL unit carry a message in ``owner``'s name? One that does not parse
    counts as claiming (it could hide one from us but not from a lenient player)."""
    try:
        return any(uuid_ == owner for uuid_, _ in parse_sei(nal))
    except (ValueError, IndexError):
        return True


def _without_claims(stap: bytes, owner: bytes) -> bytes | None:
    """A STAP-A payload with its SEI NAL units in ``owner``'s name removed; ``stap`` itself
    when it has none, None when nothing is left or it does not parse."""
    nals: list[bytes] = []
    pos, dropped = 1, False
    while pos + 2 <= len(stap):
        size = int.from_bytes(stap[pos : pos + 2], "big")
        nal = stap[pos + 2 : pos + 2 + size]
        if size == 0 or len(nal) < size:
            return None
        if nal[0] & 0x1F == SEI and _claims(nal, owner):
            dropped = True
        else:
            nals.append(nal)
        pos += 2 + size
    if not dropped:
        return stap
    if not nals:
        return None
    return stap[:1] + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def strip_claimed_sei(
    payloads: list[bytes], owner: bytes = STAGECAST_UUID
) -> list[tuple[int, bytes | None]]:
    """What to change in one H.264 frame's RTP payloads so that no SEI message in ``owner``'s
    name is left: (index, new payload or None to drop). An anchor must not write the
    operator's timed metadata: its viewers could not tell a forged product card or quiz answer
    from ours. Empty in the common case (no SEI at all), found by looking at one or two bytes
    per payload."""
    changes: list[tuple[int, bytes | None]] = []
    run: list[int] = []  # the FU-A fragments of one SEI NAL unit
    for i, p in enumerate(payloads):
        if not p:
            continue
        kind = p[0] & 0x1F
        if kind == FU_A and len(p) > 1 and p[1] & 0x1F == SEI:
            if p[1] & 0x80:  # a start fragment
                changes += [(j, None) for j in run]  # one left open: never ended, dropped
                run = [i]
            elif run:
                run.append(i)
            else:
                changes.append((i, None))  # a fragment whose start is not in the frame
            if run and p[1] & 0x40:  # the end fragment: the whole NAL unit is here
                nal = bytes([payloads[run[0]][0] & 0xE0 | SEI]) + b"".join(
                    payloads[j][2:] for j in run
                )
                if _claims(nal, owner):
                    changes += [(j, None) for j in run]
                run = []
        elif kind == SEI:
            if _claims(p, owner):
                changes.append((i, None))
        elif kind == STAP_A and any(p[at] & 0x1F == SEI for at in _stap_headers(p)):
            kept = _without_claims(p, owner)
            if kept is not p:
                changes.append((i, kept))
    changes += [(j, None) for j in run]  # an SEI NAL unit cut short by the frame's end
    return changes


def declared_nal_units(payloads: list[bytes]) -> int:
    """How many NAL units a frame's RTP payloads begin (a single NAL unit, each one in a
    STAP-A, each FU-A start fragment)."""
    count = 0
    for p in payloads:
        if not p:
            continue
        kind = p[0] & 0x1F
        if kind == STAP_A:
            count += len(_stap_headers(p))
        elif kind == FU_A:
            count += 1 if len(p) > 1 and p[1] & 0x80 else 0
        else:
            count += 1
    return count


def hides_claimed_sei(
    payloads: list[bytes], annexb_data: bytes, owner: bytes = STAGECAST_UUID
) -> bool:
    """Does the frame carry an SEI message in ``owner``'s name inside another NAL unit? A start
    code within a NAL unit's bytes (which emulation prevention forbids a conforming encoder to
    write) splits it in two for every Annex-B reader: recorders, bridges, a browser's
    depacketizer. Cheap when the frame has no more start codes than NAL units it declares."""
    if annexb_data.count(b"\x00\x00\x01") <= declared_nal_units(payloads):
        return False
    for nal in annexb_data.split(b"\x00\x00\x01")[1:]:
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F == SEI and _claims(nal, owner):
            return True
    return False


def _stap_headers(stap: bytes) -> list[int]:
    """Offsets of the NAL unit headers inside a STAP-A payload (as far as it parses)."""
    out, pos = [], 1
    while pos + 2 < len(stap):
        out.append(pos + 2)
        pos += 2 + int.from_bytes(stap[pos : pos + 2], "big")
    return out


def annexb(payload: bytes) -> bytes:
    """The Annex-B bytes of a single NAL unit or STAP-A payload (what a depayloader makes)."""
    if payload and payload[0] & 0x1F == STAP_A:
        return b"".join(
            START + payload[at : at + int.from_bytes(payload[at - 2 : at], "big")]
            for at in _stap_headers(payload)
        )
    return START + payload


def find_sei(payloads: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    """The user-data payloads written by stagecast in a frame's RTP payloads."""
    found = []
    for p in payloads:
        if p and p[0] & 0x1F == SEI:
            try:
                found += [data for owner, data in parse_sei(p) if owner == STAGECAST_UUID]
            except (ValueError, IndexError):
                continue
    return found
